"""The TTS audio cache: its bounds (TTL, entries, bytes), the worker serving the very frames a
synthesis made, and end to end: the second identical /v1/tts is a cache hit (metrics say so)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from common.frames import AudioChunk, SynthesizeRequest
from common.metrics import CACHE_BYTES, CACHE_EVICTIONS, CACHE_HITS, CACHE_MISSES
from tests.loopback import LOOPBACK
from tests.stack import Stack, free_port
from tests.test_engine_failures import RecordingRuntime, run, stop
from tests.test_limits import redis_url  # noqa: F401  (a throwaway redis-server, the fixture)
from tts_worker.cache import AudioCache, SharedAudioCache, audio_key
from tts_worker.engines.fake import FakeTts
from tts_worker.worker import TtsWorker

AUDIO = 'cache="audio"'  # the label of this cache's samples on /metrics


def count(metric: object) -> float:
    return metric.labels("audio")._value.get()  # type: ignore[attr-defined]


def key(text: str, **changes: object) -> str:
    fields: dict[str, object] = {"voice": "", "language": "en", "sample_rate": 16000,
                                 "frame_ms": 20, "model": "ab" * 32, **changes}
    return audio_key(text, **fields)  # type: ignore[arg-type]


def test_the_key_ignores_spacing_but_not_voice_language_format_or_model() -> None:
    base = key("Hello  there.")
    assert key(" Hello there. ") == base
    for change in ({"voice": "other"}, {"language": "sn"}, {"sample_rate": 24000}, {"frame_ms": 40},
                   {"model": "cd" * 32}):
        assert key("Hello there.", **change) != base, change
    assert key("Hello there!") != base


def test_entries_bytes_and_ttl_bound_the_cache_least_recently_used_first() -> None:
    cache = AudioCache(entries=2, max_bytes=100, ttl_s=3600)
    hits, misses, evictions = count(CACHE_HITS), count(CACHE_MISSES), count(CACHE_EVICTIONS)
    cache.put("a", [b"x" * 10])
    cache.put("b", [b"y" * 10])
    assert cache.get("a") == [b"x" * 10]  # a is now the most recently used
    cache.put("c", [b"z" * 10])  # over 2 entries: b (least recently used) goes
    assert cache.get("b") is None and cache.get("c") is not None and cache.get("a") is not None
    cache.put("big", [b"w" * 95])  # over 100 bytes: the least recently used go until it fits
    assert cache.get("big") is not None and cache.bytes <= 100 and len(cache) == 1
    cache.put("huge", [b"v" * 101])  # larger than the whole cache: not kept
    assert cache.get("huge") is None
    assert count(CACHE_HITS) - hits == 4 and count(CACHE_MISSES) - misses == 2
    assert count(CACHE_EVICTIONS) - evictions == 3  # b, then c and a
    assert CACHE_BYTES.labels("audio")._value.get() == cache.bytes == 95

    short = AudioCache(entries=10, max_bytes=1000, ttl_s=0.05)
    short.put("t", [b"t"])
    assert short.get("t") == [b"t"]
    time.sleep(0.1)
    assert short.get("t") is None and len(short) == 0


class Counting(FakeTts):
    """The fake voice, counting the phrases it really synthesized."""

    def __init__(self) -> None:
        super().__init__(ms_per_char=10, rtf=0.0)
        self.calls = 0

    def synthesize_stream(self, text: str, **options: object):  # type: ignore[no-untyped-def,override]
        self.calls += 1
        return super().synthesize_stream(text, **options)  # type: ignore[arg-type]


def test_the_worker_replays_the_same_frames_and_skips_the_engine() -> None:
    voice = Counting()

    async def main() -> None:
        worker = TtsWorker(voice, frame_ms=20, cache=AudioCache(entries=10, max_bytes=10**6, ttl_s=60))
        runtime = RecordingRuntime("tts")
        worker.runtime = runtime  # type: ignore[assignment]
        serving = asyncio.create_task(worker.run())
        for request_id in ("fresh", "again"):
            await worker.handle(SynthesizeRequest(session_id="s1", turn_id=1, request_id=request_id,
                                                  text="Hello there."))
            await runtime.wait_for(runtime.final_of(request_id))
        fresh, again = ([c.payload for c in runtime.of(AudioChunk, r) if c.payload]
                        for r in ("fresh", "again"))
        assert fresh and again == fresh
        assert voice.calls == 1
        await stop(serving)

    run(main())


def test_two_workers_share_entries_through_redis(redis_url: str) -> None:  # noqa: F811
    async def main() -> None:
        voices = [Counting(), Counting()]
        caches = [SharedAudioCache(AudioCache(entries=10, max_bytes=10**6, ttl_s=60), redis_url)
                  for _ in voices]
        out = []
        hits = count(CACHE_HITS)
        for voice, cache in zip(voices, caches, strict=True):
            worker = TtsWorker(voice, frame_ms=20, cache=cache)
            runtime = RecordingRuntime("tts")
            worker.runtime = runtime  # type: ignore[assignment]
            serving = asyncio.create_task(worker.run())
            await worker.handle(SynthesizeRequest(session_id="s1", turn_id=1, request_id="r",
                                                  text="Shared between workers."))
            await runtime.wait_for(runtime.final_of("r"))
            out.append([c.payload for c in runtime.of(AudioChunk, "r") if c.payload])
            await stop(serving)
            await cache.close()
        assert [v.calls for v in voices] == [1, 0]  # the second worker never synthesized
        assert out[0] and out[1] == out[0]
        assert count(CACHE_HITS) - hits == 1

    run(main())


def test_an_unreachable_redis_is_a_miss_not_a_failure() -> None:
    async def main() -> None:
        voice = Counting()
        cache = SharedAudioCache(AudioCache(entries=10, max_bytes=10**6, ttl_s=60),
                                 f"redis://127.0.0.1:{free_port()}/0")
        worker = TtsWorker(voice, frame_ms=20, cache=cache)
        runtime = RecordingRuntime("tts")
        worker.runtime = runtime  # type: ignore[assignment]
        serving = asyncio.create_task(worker.run())
        await worker.handle(SynthesizeRequest(session_id="s1", turn_id=1, request_id="r", text="Hi."))
        await runtime.wait_for(runtime.final_of("r"))
        assert voice.calls == 1 and [c for c in runtime.of(AudioChunk, "r") if c.payload]
        await stop(serving)
        await cache.close()

    run(main())


@pytest.mark.e2e
def test_a_second_identical_tts_request_is_served_from_the_cache(fake_stack: Stack) -> None:
    body = {"text": f"Cache check number {uuid.uuid4().int % 100000}.", "format": "wav"}
    hits, misses = (fake_stack.metric(f"inzwa_cache_{n}_total", AUDIO) for n in ("hits", "misses"))
    first = LOOPBACK.post(f"{fake_stack.http}/v1/tts", json=body, timeout=60)
    second = LOOPBACK.post(f"{fake_stack.http}/v1/tts", json=body, timeout=60)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert len(first.content) > 16000 and second.content == first.content  # the same audio
    assert fake_stack.metric("inzwa_cache_misses_total", AUDIO) - misses >= 1
    assert fake_stack.metric("inzwa_cache_hits_total", AUDIO) - hits >= 1
