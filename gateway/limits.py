"""Per-principal rate limits and quotas: requests per minute, concurrent sessions, audio per day.

Rates are token buckets: a caller may burst up to the bucket's capacity, then is held to the
refill rate, and a refusal can say exactly when to retry. One gateway keeps its buckets in
memory; several gateways behind a load balancer must share them, so with `INZWA_REDIS_URL`
set the buckets live in Redis and are updated by one atomic Lua script that reads the Redis
server's clock (gateways' clocks may disagree, Redis' is one). A limit of 0 or less turns
that dimension off.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.settings import Settings

SECONDS_PER_DAY = 86400.0
SESSION_RETRY_S = 5.0  # sessions end at human pace: a few seconds is a fair first retry
SWEEP_INTERVAL_S = 60.0
REDIS_PREFIX = "inzwa:rl:"
# A crashed gateway never closes its sessions; its count expires this long after the
# principal's last open. Trade-off: a principal whose sessions all outlive this without a new
# open gets its count reset early, which lets it in rather than locking it out.
REDIS_SESSION_TTL_S = 2 * 3600


class RateLimited(Exception):
    """A refused request; `retry_after_header` is the HTTP `Retry-After` value (whole seconds >= 1)."""

    def __init__(self, limit: str, retry_after_s: float, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.message = message

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s)))


@dataclass(frozen=True)
class _Rate:
    """One bucket dimension: name, capacity and refill per second."""

    limit: str
    capacity: float
    per_second: float

    @property
    def unlimited(self) -> bool:
        return self.capacity <= 0


class Limits(ABC):
    """The common API; `make_limits` picks the backend."""

    def __init__(self, settings: Settings) -> None:
        rpm = float(settings.rate_requests_per_minute)
        audio = float(settings.rate_audio_seconds_per_day)
        self.requests = _Rate("requests_per_minute", rpm, rpm / 60.0)
        self.audio = _Rate("audio_seconds_per_day", audio, audio / SECONDS_PER_DAY)
        self.max_sessions = settings.rate_concurrent_sessions

    @abstractmethod
    async def hit(self, principal_id: str) -> None:
        """Count one request; raises `RateLimited` when the per-minute bucket is empty."""
        raise NotImplementedError

    @abstractmethod
    async def open_session(self, principal_id: str) -> None:
        """Count one more live session; raises `RateLimited` beyond the concurrent limit."""
        raise NotImplementedError

    @abstractmethod
    async def close_session(self, principal_id: str) -> None:
        """Release a session opened with `open_session` (extra closes are harmless)."""
        raise NotImplementedError

    @abstractmethod
    async def charge_audio(self, principal_id: str, seconds: float) -> None:
        """Charge audio seconds to the daily quota, or raise `RateLimited` without charging."""
        raise NotImplementedError

    @abstractmethod
    async def close(self) -> None:
        """Release connections (for Redis); the object is not used afterwards."""
        raise NotImplementedError

    def _refused(self, rate: _Rate, retry_after_s: float, cost: float) -> RateLimited:
        if rate is self.requests:
            message = f"too many requests: at most {rate.capacity:g} per minute"
        elif cost > rate.capacity:
            message = f"{cost:g} s of audio exceeds the whole daily quota of {rate.capacity:g} s"
        else:
            message = f"daily audio quota of {rate.capacity:g} s used up"
        return RateLimited(rate.limit, retry_after_s, f"{message}; retry in {math.ceil(retry_after_s)} s")

    def _too_many_sessions(self) -> RateLimited:
        return RateLimited("concurrent_sessions", SESSION_RETRY_S,
                           f"too many concurrent sessions: at most {self.max_sessions}")


def _refill(tokens: float, elapsed: float, rate: _Rate) -> float:
    return min(rate.capacity, tokens + max(0.0, elapsed) * rate.per_second)


def _wait_for(tokens: float, cost: float, rate: _Rate) -> float:
    """Seconds until `cost` tokens are there.

    A cost above capacity never fits: a whole refill period is reported then, so a client
    honouring Retry-After does not spin on a request that the message says cannot succeed.
    """
    if cost > rate.capacity:
        return rate.capacity / rate.per_second
    return (cost - tokens) / rate.per_second


@dataclass
class _Bucket:
    tokens: float
    at: float


class MemoryLimits(Limits):
    """Buckets in this process; right for one gateway. Not thread-safe: use from one event loop."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(settings)
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._sessions: dict[str, int] = {}
        self._last_sweep = clock()

    @property
    def bucket_count(self) -> int:
        """Buckets held now (for tests and metrics)."""
        return len(self._buckets)

    async def hit(self, principal_id: str) -> None:
        now = self._clock()
        if now - self._last_sweep >= SWEEP_INTERVAL_S:
            self._sweep(now)
        self._take(self.requests, principal_id, 1.0, now)

    async def open_session(self, principal_id: str) -> None:
        if self.max_sessions <= 0:
            return
        count = self._sessions.get(principal_id, 0)
        if count >= self.max_sessions:
            raise self._too_many_sessions()
        self._sessions[principal_id] = count + 1

    async def close_session(self, principal_id: str) -> None:
        count = self._sessions.pop(principal_id, 0) - 1
        if count > 0:  # zero counts are dropped so idle principals cost no memory
            self._sessions[principal_id] = count

    async def charge_audio(self, principal_id: str, seconds: float) -> None:
        if seconds > 0:
            self._take(self.audio, principal_id, seconds, self._clock())

    async def close(self) -> None:
        """Nothing to release: the buckets are plain memory."""
        self._buckets.clear()
        self._sessions.clear()

    def _take(self, rate: _Rate, principal_id: str, cost: float, now: float) -> None:
        if rate.unlimited:
            return
        key = (rate.limit, principal_id)
        bucket = self._buckets.get(key)
        tokens = rate.capacity if bucket is None else _refill(bucket.tokens, now - bucket.at, rate)
        if tokens < cost:
            raise self._refused(rate, _wait_for(tokens, cost, rate), cost)
        self._buckets[key] = _Bucket(tokens - cost, now)

    def _sweep(self, now: float) -> None:
        # A bucket that has refilled to capacity is the same as no bucket: drop it, so memory
        # follows the callers active within a refill period, not every caller ever seen.
        rates = {self.requests.limit: self.requests, self.audio.limit: self.audio}
        full = [key for key, bucket in self._buckets.items()
                if _refill(bucket.tokens, now - bucket.at, rates[key[0]]) >= rates[key[0]].capacity]
        for key in full:
            del self._buckets[key]
        self._last_sweep = now


# KEYS[1]: the bucket hash; ARGV: capacity, refill per second, cost.
# Returns {1, "0"} when taken, else {0, seconds to wait}. Numbers go back as strings because
# Redis truncates Lua numbers to integers in replies.
_TAKE_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = capacity
else
  tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
end
if cost > capacity then
  return {0, string.format('%.6f', capacity / rate)}
end
if tokens < cost then
  return {0, string.format('%.6f', (cost - tokens) / rate)}
end
tokens = tokens - cost
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate) + 1)
return {1, '0'}
"""

# KEYS[1]: the session counter; ARGV: limit, ttl. INCR, then undo when over the limit, in one
# step so gateways racing for the last slot cannot both get it.
_OPEN_LUA = """
local count = redis.call('INCR', KEYS[1])
if count > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

# DECR, deleting at zero or below (a close after the safety TTL expired the count).
_CLOSE_LUA = """
if redis.call('DECR', KEYS[1]) <= 0 then redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisLimits(Limits):
    """Buckets in Redis, shared by every gateway using the same `redis_url`."""

    def __init__(self, settings: Settings, prefix: str = REDIS_PREFIX,
                 session_ttl_s: int = REDIS_SESSION_TTL_S) -> None:
        super().__init__(settings)
        import redis.asyncio  # lazily: only deployments that share limits need redis-py

        self._redis: Any = redis.asyncio.from_url(settings.redis_url, decode_responses=True)
        self._prefix = prefix
        self._session_ttl_s = session_ttl_s
        self._take_script = self._redis.register_script(_TAKE_LUA)
        self._open_script = self._redis.register_script(_OPEN_LUA)
        self._close_script = self._redis.register_script(_CLOSE_LUA)

    def key(self, kind: str, principal_id: str) -> str:
        return f"{self._prefix}{kind}:{principal_id}"

    async def hit(self, principal_id: str) -> None:
        await self._take(self.requests, "rpm", principal_id, 1.0)

    async def open_session(self, principal_id: str) -> None:
        if self.max_sessions <= 0:
            return
        opened = await self._open_script(keys=[self.key("sessions", principal_id)],
                                         args=[self.max_sessions, self._session_ttl_s])
        if not int(opened):
            raise self._too_many_sessions()

    async def close_session(self, principal_id: str) -> None:
        if self.max_sessions > 0:
            await self._close_script(keys=[self.key("sessions", principal_id)])

    async def charge_audio(self, principal_id: str, seconds: float) -> None:
        if seconds > 0:
            await self._take(self.audio, "audio", principal_id, seconds)

    async def close(self) -> None:
        await self._redis.aclose()

    async def _take(self, rate: _Rate, kind: str, principal_id: str, cost: float) -> None:
        if rate.unlimited:
            return
        taken, wait = await self._take_script(keys=[self.key(kind, principal_id)],
                                              args=[rate.capacity, rate.per_second, cost])
        if not int(taken):
            raise self._refused(rate, float(wait), cost)


def make_limits(settings: Settings) -> Limits:
    """In-memory limits for one gateway, or Redis-backed ones when `redis_url` is set."""
    if settings.redis_url:
        return RedisLimits(settings)
    return MemoryLimits(settings)
