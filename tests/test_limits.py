"""Rate limits and quotas: the in-memory backend on a fake clock, the Redis one on a real server.

The Redis tests start a throwaway `redis-server` (installed by scripts/install-system-deps.sh)
on a free loopback port, because the point of that backend is that several gateways share
one bucket, which only a real server shows.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from common.settings import Settings
from gateway.limits import (
    REDIS_PREFIX,
    Limits,
    MemoryLimits,
    RateLimited,
    RedisLimits,
    make_limits,
)
from tests.stack import free_port


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_settings(rpm: int = 3, sessions: int = 2, audio: float = 100.0, redis_url: str = "") -> Settings:
    return Settings(_env_file=None, rate_requests_per_minute=rpm, rate_concurrent_sessions=sessions,
                    rate_audio_seconds_per_day=audio, redis_url=redis_url)


def memory(clock: FakeClock, **limits: Any) -> MemoryLimits:
    return MemoryLimits(make_settings(**limits), clock=clock)


def refusal(call: Callable[[], Awaitable[None]]) -> RateLimited:
    async def run() -> None:
        await call()

    with pytest.raises(RateLimited) as caught:
        asyncio.run(run())
    return caught.value


def run(call: Callable[[], Awaitable[None]], times: int = 1) -> None:
    async def go() -> None:
        for _ in range(times):
            await call()

    asyncio.run(go())


# --- RateLimited ---


def test_retry_after_header_is_whole_seconds_at_least_one() -> None:
    assert RateLimited("requests_per_minute", 0.01, "m").retry_after_header == "1"
    assert RateLimited("requests_per_minute", 0.0, "m").retry_after_header == "1"
    assert RateLimited("requests_per_minute", 8.57, "m").retry_after_header == "9"
    assert RateLimited("requests_per_minute", 20.0, "m").retry_after_header == "20"


# --- memory backend ---


def test_requests_over_the_limit_then_refill() -> None:
    clock = FakeClock()
    limits = memory(clock, rpm=3)
    run(lambda: limits.hit("a"), times=3)
    error = refusal(lambda: limits.hit("a"))
    assert error.limit == "requests_per_minute"
    assert error.retry_after_s == pytest.approx(20.0)  # 3 per minute: one token every 20 s
    assert error.retry_after_header == "20"
    assert "3 per minute" in error.message
    clock.now += 19.0
    assert refusal(lambda: limits.hit("a")).retry_after_s == pytest.approx(1.0)
    clock.now += 1.0
    run(lambda: limits.hit("a"))
    assert refusal(lambda: limits.hit("a")).retry_after_s == pytest.approx(20.0)
    clock.now += 60.0
    run(lambda: limits.hit("a"), times=3)  # a full minute refills the whole burst, no more


def test_principals_have_separate_buckets() -> None:
    limits = memory(FakeClock(), rpm=1)
    run(lambda: limits.hit("a"))
    refusal(lambda: limits.hit("a"))
    run(lambda: limits.hit("b"))


def test_idle_full_buckets_are_swept() -> None:
    clock = FakeClock()
    limits = memory(clock, rpm=60)
    for name in ("a", "b", "c"):
        run(lambda name=name: limits.hit(name))
    run(lambda: limits.charge_audio("a", 10.0))
    assert limits.bucket_count == 4
    clock.now += 120.0  # request buckets are full again; the audio one needs a day
    run(lambda: limits.hit("d"))
    assert limits.bucket_count == 2  # a's audio bucket and d's fresh request bucket


def test_concurrent_sessions() -> None:
    limits = memory(FakeClock(), sessions=2)
    run(lambda: limits.open_session("a"), times=2)
    error = refusal(lambda: limits.open_session("a"))
    assert error.limit == "concurrent_sessions" and error.retry_after_s == pytest.approx(5.0)
    run(lambda: limits.open_session("b"))  # other principals are unaffected
    run(lambda: limits.close_session("a"))
    run(lambda: limits.open_session("a"))
    refusal(lambda: limits.open_session("a"))


def test_extra_closes_do_not_raise_the_limit() -> None:
    limits = memory(FakeClock(), sessions=1)
    run(lambda: limits.close_session("a"), times=3)
    run(lambda: limits.open_session("a"))
    refusal(lambda: limits.open_session("a"))


def test_audio_quota() -> None:
    clock = FakeClock()
    limits = memory(clock, audio=100.0)
    run(lambda: limits.charge_audio("a", 60.0))
    error = refusal(lambda: limits.charge_audio("a", 60.0))
    assert error.limit == "audio_seconds_per_day"
    # 20 s missing, refilled at 100 s per 86400 s
    assert error.retry_after_s == pytest.approx(20.0 * 86400 / 100)
    run(lambda: limits.charge_audio("a", 40.0))  # the refused charge took nothing
    refusal(lambda: limits.charge_audio("a", 1.0))
    clock.now += 864.0  # 1 s of audio back
    run(lambda: limits.charge_audio("a", 1.0))
    run(lambda: limits.charge_audio("a", 0.0))  # nothing to charge is never refused


def test_audio_larger_than_the_daily_quota() -> None:
    limits = memory(FakeClock(), audio=100.0)
    error = refusal(lambda: limits.charge_audio("a", 150.0))
    assert "exceeds the whole daily quota" in error.message
    assert error.retry_after_s == pytest.approx(86400.0)  # never fits: no point retrying soon
    run(lambda: limits.charge_audio("a", 100.0))


def test_zero_means_unlimited() -> None:
    limits = memory(FakeClock(), rpm=0, sessions=0, audio=0.0)
    run(lambda: limits.hit("a"), times=1000)
    run(lambda: limits.open_session("a"), times=100)
    run(lambda: limits.charge_audio("a", 1e9))
    assert limits.bucket_count == 0


def test_make_limits_picks_the_backend() -> None:
    assert isinstance(make_limits(make_settings()), MemoryLimits)
    shared = make_limits(make_settings(redis_url="redis://127.0.0.1:1/0"))  # connects lazily
    assert isinstance(shared, RedisLimits)
    asyncio.run(shared.close())


# --- Redis backend, against a real server ---


def wait_for_redis(process: subprocess.Popen[bytes], port: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"redis-server exited with {process.returncode}: {process.stdout.read()!r}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.02)
    pytest.fail(f"redis-server did not answer on port {port} within {timeout_s} s")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not found: run `bash scripts/install-system-deps.sh` "
                    "(apt-get install redis-server, or brew install redis)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_redis(process, port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def gateways(url: str, **limits: Any) -> tuple[Limits, Limits]:
    """Two limit instances on one Redis: what two gateways behind a load balancer see."""
    settings = make_settings(redis_url=url, **limits)
    return make_limits(settings), make_limits(settings)


def test_redis_gateways_share_one_request_bucket(redis_url: str) -> None:
    async def scenario() -> RateLimited:
        first, second = gateways(redis_url, rpm=3)
        try:
            await first.hit("shared")
            await second.hit("shared")
            await first.hit("shared")
            await second.hit("other")  # another principal has its own bucket
            with pytest.raises(RateLimited) as caught:
                await second.hit("shared")
            return caught.value
        finally:
            await first.close()
            await second.close()

    error = asyncio.run(scenario())
    assert error.limit == "requests_per_minute"
    assert 19.0 < error.retry_after_s <= 20.0
    assert error.retry_after_header == "20"


def test_redis_bucket_refills_in_real_time(redis_url: str) -> None:
    async def scenario() -> None:
        first, second = gateways(redis_url, rpm=600)  # a token back every 0.1 s
        try:
            for count in range(2000):  # drain the 600-token burst (it refills while we drain)
                try:
                    await (first if count % 2 else second).hit("refill")
                except RateLimited as error:
                    assert 0.0 < error.retry_after_s <= 0.1
                    await asyncio.sleep(error.retry_after_s + 0.02)
                    await first.hit("refill")
                    return
            pytest.fail("600 requests per minute never ran out")
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())


def test_redis_bucket_key_expires(redis_url: str) -> None:
    import redis.asyncio

    async def scenario() -> int:
        limits = make_limits(make_settings(rpm=3, redis_url=redis_url))
        client = redis.asyncio.from_url(redis_url)
        try:
            await limits.hit("ttl")
            return await client.ttl(f"{REDIS_PREFIX}rpm:ttl")
        finally:
            await limits.close()
            await client.aclose()

    assert 0 < asyncio.run(scenario()) <= 21  # one token to refill at 3 per minute, plus 1 s


def test_redis_concurrent_sessions_are_shared(redis_url: str) -> None:
    import redis.asyncio

    async def scenario() -> None:
        first, second = gateways(redis_url, sessions=2)
        client = redis.asyncio.from_url(redis_url)
        try:
            await first.open_session("s")
            await second.open_session("s")
            with pytest.raises(RateLimited) as caught:
                await first.open_session("s")
            assert caught.value.limit == "concurrent_sessions" and caught.value.retry_after_header == "5"
            assert await client.ttl(f"{REDIS_PREFIX}sessions:s") > 0  # a crashed gateway's count expires
            await second.close_session("s")
            await first.open_session("s")
            for _ in range(4):  # more closes than opens must not leave a negative count
                await first.close_session("s")
            await first.open_session("s")
            await second.open_session("s")
            with pytest.raises(RateLimited):
                await second.open_session("s")
        finally:
            await first.close()
            await second.close()
            await client.aclose()

    asyncio.run(scenario())


def test_redis_audio_quota(redis_url: str) -> None:
    async def scenario() -> RateLimited:
        first, second = gateways(redis_url, audio=100.0)
        try:
            await first.charge_audio("audio", 60.0)
            with pytest.raises(RateLimited) as caught:
                await second.charge_audio("audio", 60.0)
            await second.charge_audio("audio", 39.0)  # the refused charge took nothing
            with pytest.raises(RateLimited) as too_big:
                await first.charge_audio("big", 150.0)
            assert too_big.value.retry_after_s == pytest.approx(86400.0)
            return caught.value
        finally:
            await first.close()
            await second.close()

    error = asyncio.run(scenario())
    assert error.limit == "audio_seconds_per_day"
    assert error.retry_after_s == pytest.approx(20.0 * 86400 / 100, abs=1.0)


def test_redis_unlimited_needs_no_server() -> None:
    async def scenario() -> None:
        limits = make_limits(make_settings(rpm=0, sessions=0, audio=0.0, redis_url="redis://127.0.0.1:1/0"))
        try:
            await limits.hit("a")
            await limits.open_session("a")
            await limits.close_session("a")
            await limits.charge_audio("a", 1e6)
        finally:
            await limits.close()

    asyncio.run(scenario())
