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
import unicodedata
from typing import Any

import msgspec

from common.lru import TtlLru
from common.metrics import CACHE_HITS, CACHE_MISSES

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


def _frames_size(frames: list[bytes]) -> int:
    return sum(len(f) for f in frames)


class AudioCache(TtlLru[list[bytes]]):
    """The in-memory tier: a phrase's frames by key (common/lru.py's bounds and metrics)."""

    def __init__(self, *, entries: int, max_bytes: int, ttl_s: float) -> None:
        super().__init__(NAME, entries=entries, max_bytes=max_bytes, ttl_s=ttl_s, size=_frames_size)

    async def fetch(self, key: str) -> list[bytes] | None:
        return self.get(key)

    async def store(self, key: str, frames: list[bytes]) -> None:
        self.put(key, frames)


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
        if not frames or _frames_size(frames) > self.local.max_bytes:
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
