"""The audio cache: a phrase synthesized once is served again from memory (issue 13).

Key: SHA-256 of the normalized text, voice, language, output format (sample rate, frame size,
PCM16) and the voice model's identity (its sha256, or name/version for a remote voice), so a
new voice model never serves the old one's audio. Bounded by a TTL, an entry count and bytes,
least recently used first out. A hit replays exactly the frames a fresh synthesis produced.
Per TTS worker process, in memory (a shared Redis tier is not built yet).
"""

from __future__ import annotations

import hashlib
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass

from common.metrics import CACHE_BYTES, CACHE_EVICTIONS, CACHE_HITS, CACHE_MISSES

NAME = "audio"


def normalized(text: str) -> str:
    """The text as it is spoken: NFC, whitespace collapsed (spacing never changes the audio)."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def audio_key(text: str, *, voice: str, language: str, sample_rate: int, frame_ms: int,
              model: str) -> str:
    parts = [normalized(text), voice, language, f"pcm16/{sample_rate}/{frame_ms}", model]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


@dataclass
class _Entry:
    frames: list[bytes]
    size: int
    expires: float


class AudioCache:
    def __init__(self, *, entries: int, max_bytes: int, ttl_s: float) -> None:
        self.max_entries = entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.bytes = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0 and self.ttl_s > 0

    def get(self, key: str) -> list[bytes] | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires <= time.monotonic():
            self._drop(key)
            entry = None
        if entry is None:
            CACHE_MISSES.labels(NAME).inc()
            return None
        self._entries.move_to_end(key)
        CACHE_HITS.labels(NAME).inc()
        return entry.frames

    def put(self, key: str, frames: list[bytes]) -> None:
        size = sum(len(f) for f in frames)
        if not self.enabled or not frames or size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key, evicted=False)
        self._entries[key] = _Entry(frames, size, time.monotonic() + self.ttl_s)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        CACHE_BYTES.labels(NAME).set(self.bytes)

    def _drop(self, key: str, *, evicted: bool = True) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
        if evicted:
            CACHE_EVICTIONS.labels(NAME).inc()
        CACHE_BYTES.labels(NAME).set(self.bytes)

    def __len__(self) -> int:
        return len(self._entries)
