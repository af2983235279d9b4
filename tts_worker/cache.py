"""The audio cache: a phrase synthesized once is served again from memory (issue 13).

Key: SHA-256 of the normalized text, voice, language, output format (sample rate, frame size,
PCM16) and the voice model's identity (its sha256, or name/version for a remote voice), so a
new voice model never serves the old one's audio. Bounded by a TTL, an entry count and bytes,
least recently used first out. A hit replays exactly the frames a fresh synthesis produced.
In memory per TTS worker process; with `INZWA_REDIS_URL` set, a Redis tier behind it shares
entries between workers (bounded there by the TTL and the server's own maxmemory policy).
A Redis that fails or is slow is a miss, never a failed phrase.
"""

from __future__ import annotations

import hashlib
import logging
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgspec

from common.metrics import CACHE_BYTES, CACHE_EVICTIONS, CACHE_HITS, CACHE_MISSES

NAME = "audio"
REDIS_PREFIX = "inzwa:audio:"

log = logging.getLogger(__name__)


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
        frames = self.peek(key)
        (CACHE_MISSES if frames is None else CACHE_HITS).labels(NAME).inc()
        return frames

    def peek(self, key: str) -> list[bytes] | None:
        """As `get`, without counting a hit or a miss (a tier above counts)."""
        entry = self._entries.get(key)
        if entry is not None and entry.expires <= time.monotonic():
            self._drop(key)
            entry = None
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry.frames

    async def fetch(self, key: str) -> list[bytes] | None:
        return self.get(key)

    async def store(self, key: str, frames: list[bytes]) -> None:
        self.put(key, frames)

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


class SharedAudioCache:
    """The in-memory cache in front of a Redis tier that every TTS worker shares."""

    def __init__(self, local: AudioCache, redis_url: str, *, timeout_s: float = 0.25) -> None:
        import redis.asyncio as aioredis  # only with INZWA_REDIS_URL (the `redis` extra)

        self.local = local
        self.enabled = local.enabled
        self._redis: Any = aioredis.from_url(redis_url, socket_timeout=timeout_s,
                                             socket_connect_timeout=timeout_s)
        self._frames = msgspec.msgpack.Decoder(list[bytes])

    async def fetch(self, key: str) -> list[bytes] | None:
        frames = self.local.peek(key)
        if frames is None:
            try:
                data = await self._redis.get(REDIS_PREFIX + key)
            except Exception as exc:  # a miss: synthesis goes on without the shared tier
                log.warning("audio cache: redis unavailable", extra={"error": type(exc).__name__})
                data = None
            if data is not None:
                frames = self._frames.decode(data)
                self.local.put(key, frames)
        (CACHE_MISSES if frames is None else CACHE_HITS).labels(NAME).inc()
        return frames

    async def store(self, key: str, frames: list[bytes]) -> None:
        self.local.put(key, frames)
        if not frames or sum(len(f) for f in frames) > self.local.max_bytes:
            return
        try:
            await self._redis.set(REDIS_PREFIX + key, msgspec.msgpack.encode(frames),
                                  px=int(self.local.ttl_s * 1000))
        except Exception as exc:
            log.warning("audio cache: redis unavailable", extra={"error": type(exc).__name__})

    async def close(self) -> None:
        await self._redis.aclose()


def make_cache(*, entries: int, max_bytes: int, ttl_s: float,
               redis_url: str = "") -> AudioCache | SharedAudioCache:
    local = AudioCache(entries=entries, max_bytes=max_bytes, ttl_s=ttl_s)
    if redis_url and local.enabled:
        return SharedAudioCache(local, redis_url)
    return local
