"""A bounded cache: time to live, an entry count and a byte size, least recently used out first.

Shared by the TTS worker's audio cache (tts_worker/cache.py) and the orchestrator's response
cache (orchestrator/response_cache.py), so both count hits, misses, evictions and bytes the same
way in inzwa_cache_*{cache=<name>}. Not thread-safe: each user owns one on its event loop.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from common.metrics import CACHE_BYTES, CACHE_EVICTIONS, CACHE_HITS, CACHE_MISSES

V = TypeVar("V")


@dataclass
class _Entry(Generic[V]):
    value: V
    size: int
    expires: float


class TtlLru(Generic[V]):
    def __init__(self, name: str, *, entries: int, max_bytes: int, ttl_s: float,
                 size: Callable[[V], int]) -> None:
        self.name = name  # the metrics' `cache` label
        self.max_entries = entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.bytes = 0
        self._size = size
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0 and self.ttl_s > 0

    def get(self, key: str) -> V | None:
        value = self.peek(key)
        (CACHE_MISSES if value is None else CACHE_HITS).labels(self.name).inc()
        return value

    def peek(self, key: str) -> V | None:
        """As `get`, without counting a hit or a miss (a tier above counts)."""
        entry = self._entries.get(key)
        if entry is not None and entry.expires <= time.monotonic():
            self._drop(key)
            entry = None
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry.value

    def put(self, key: str, value: V) -> None:
        """Keep `value` (an empty one, or one larger than the whole cache, is not kept)."""
        size = self._size(value)
        if not self.enabled or not value or size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key, evicted=False)
        self._entries[key] = _Entry(value, size, time.monotonic() + self.ttl_s)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        CACHE_BYTES.labels(self.name).set(self.bytes)

    def _drop(self, key: str, *, evicted: bool = True) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
        if evicted:
            CACHE_EVICTIONS.labels(self.name).inc()
        CACHE_BYTES.labels(self.name).set(self.bytes)

    def __len__(self) -> int:
        return len(self._entries)
