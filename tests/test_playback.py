"""The client outbox: events overtake audio, audio is paced, cancels drop unsent audio."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.audio import rms_dbfs
from common.frames import AudioChunk, TokenChunk, TranscriptChunk, TurnEvent
from gateway.playback import Outbox, SessionClosed

FRAME = b"\x01\x00" * 320  # 20 ms at 16 kHz


def audio(turn: int, n: int) -> list[AudioChunk]:
    return [AudioChunk(turn_id=turn, seq=i + 1, payload=FRAME) for i in range(n)]


async def take(box: Outbox, n: int) -> list:
    return [await asyncio.wait_for(box.next(), 5) for _ in range(n)]


def test_events_overtake_queued_audio() -> None:
    async def main() -> None:
        box = Outbox(lead_s=0.0)
        for frame in [TurnEvent(turn_id=1, event="tts.start"), *audio(1, 50)]:
            box.put(frame)
        await take(box, 3)
        box.put(TokenChunk(turn_id=1, token="hi"))
        nxt = await take(box, 1)
        assert isinstance(nxt[0], TokenChunk)

    asyncio.run(main())


def test_audio_is_paced_at_real_time_after_the_lead() -> None:
    async def main() -> None:
        box = Outbox(lead_s=0.2)
        for frame in audio(1, 50):  # one second
            box.put(frame)
        started = time.monotonic()
        frames = await take(box, 50)
        elapsed = time.monotonic() - started
        assert [f.seq for f in frames] == list(range(1, 51))
        assert elapsed >= 1.0 - 0.2 - 0.05  # never faster than playback minus the lead
        assert elapsed < 5.0

    asyncio.run(main())


def test_a_speed_factor_paces_on_a_faster_clock() -> None:
    """INZWA_PLAYBACK_SPEED (tests only): the same order and lead, `speed` times as fast."""
    async def main() -> float:
        box = Outbox(lead_s=0.2, speed=4.0)
        for frame in audio(1, 100):  # two seconds of reply
            box.put(frame)
        started = time.monotonic()
        frames = await take(box, 100)
        assert [f.seq for f in frames] == list(range(1, 101))
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    assert 2.0 / 4 - 0.2 / 4 - 0.05 <= elapsed < 2.0 - 0.2  # a quarter of playback, never faster


def test_tts_end_follows_its_audio() -> None:
    async def main() -> None:
        box = Outbox(lead_s=10.0)
        for frame in [TurnEvent(turn_id=1, event="tts.start"), *audio(1, 3),
                      TurnEvent(turn_id=1, event="tts.end")]:
            box.put(frame)
        kinds = [getattr(f, "event", "audio") for f in await take(box, 5)]
        assert kinds == ["tts.start", "audio", "audio", "audio", "tts.end"]

    asyncio.run(main())


def test_cancel_drops_unsent_audio_of_that_turn_only() -> None:
    async def main() -> None:
        box = Outbox(lead_s=0.0)
        for frame in audio(1, 40):
            box.put(frame)
        await take(box, 2)
        box.put(TurnEvent(turn_id=1, event="tts.cancel"))
        for frame in audio(2, 2):
            box.put(frame)
        got = await take(box, 3)
        assert isinstance(got[0], TurnEvent) and got[0].event == "tts.cancel"
        assert [f.turn_id for f in got[1:]] == [2, 2]
        assert not box.audio

    asyncio.run(main())


def test_superseded_partials_are_dropped_but_finals_never() -> None:
    box = Outbox()
    box.put(TranscriptChunk(text="what", is_final=False))
    box.put(TranscriptChunk(text="what is", is_final=False))
    box.put(TranscriptChunk(text="what is the", is_final=True))
    box.put(TranscriptChunk(text="and", is_final=False))
    assert [f.text for f in box.events] == ["what is", "what is the", "and"]
    assert box.dropped_partials == 1


def test_a_client_that_never_reads_overflows_instead_of_growing() -> None:
    box = Outbox(limit=10)
    for frame in audio(1, 20):
        box.put(frame)
    assert box.overflowed and len(box.audio) == 10


def test_an_underrun_inside_a_reply_is_filled_with_comfort_noise() -> None:
    async def main() -> None:
        box = Outbox(lead_s=0.0)
        for frame in [TurnEvent(turn_id=1, event="tts.start"), *audio(1, 2)]:
            box.put(frame)
        got = await take(box, 6)  # start, two frames, then TTS is late
        comfort = [f for f in got[3:] if isinstance(f, AudioChunk)]
        assert len(comfort) == 3 and box.comfort_frames == 3
        assert all(f.turn_id == 1 and len(f.payload) == 640 for f in comfort)
        assert all(rms_dbfs(f.payload) < -50 for f in comfort)  # barely audible
        box.put(TurnEvent(turn_id=1, event="tts.end"))
        assert (await take(box, 1))[0].event == "tts.end"
        with pytest.raises(TimeoutError):  # no comfort noise once the reply is over
            await asyncio.wait_for(box.next(), 0.3)

    asyncio.run(main())


def test_a_failed_session_raises_with_its_close_code() -> None:
    async def main() -> None:
        box = Outbox()
        box.fail(SessionClosed("orchestrator_unavailable", "restarting", 1012))
        with pytest.raises(SessionClosed) as caught:
            await box.next()
        assert caught.value.close_code == 1012

    asyncio.run(main())


# --- the WebRTC reply track, the audio budget, the turn figures -----------------------------------


def test_the_track_plays_queued_audio_in_real_time_and_marks_when_it_is_out() -> None:
    from gateway.rtc_media import PcmTrack

    async def main() -> None:
        track = PcmTrack()
        fired: list[str] = []

        async def heard() -> None:
            fired.append("phrase")

        track.push(FRAME * 3)  # 60 ms
        track.mark(heard)
        started = time.monotonic()
        frames = [await track.recv() for _ in range(5)]
        elapsed = time.monotonic() - started
        assert [f.samples for f in frames] == [320] * 5 and frames[0].sample_rate == 16000
        assert [bool(f.to_ndarray().any()) for f in frames] == [True, True, True, False, False]
        assert 0.06 <= elapsed < 1.0  # frames 2..5 wait for their time
        action = await asyncio.wait_for(track.next_due(), 1)
        await action()
        assert fired == ["phrase"]
        track.stop()

    asyncio.run(main())


def test_clearing_the_track_drops_its_audio_and_the_marks_waiting_for_it() -> None:
    from gateway.rtc_media import PcmTrack

    async def main() -> None:
        track = PcmTrack()

        async def never() -> None:
            raise AssertionError("a mark for dropped audio fired")

        track.push(FRAME * 50)
        track.mark(never)
        await track.recv()
        track.clear()
        assert not (await track.recv()).to_ndarray().any()  # silence at once
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(track.next_due(), 0.2)
        track.stop()

    asyncio.run(main())


def test_the_audio_budget_allows_a_burst_then_real_time_times_the_rate() -> None:
    from gateway.session import AudioBudget

    budget = AudioBudget(rate=1.2, burst_s=1.0)
    taken = sum(budget.take(0.1) for _ in range(30))  # 3 s offered at once
    assert taken == 10  # the burst, no more
    budget.at -= 1.0  # a second later: 1.2 s more
    assert sum(budget.take(0.1) for _ in range(30)) == 10  # refilled only up to the burst
    assert AudioBudget(rate=0, burst_s=1.0).take(100.0)  # 0: unlimited


def test_turn_metrics_are_measured_from_the_end_of_speech() -> None:
    from gateway.latency import AudioClock, TurnMetrics

    clock = AudioClock()
    metrics = TurnMetrics(clock)
    for _ in range(50):  # one second of audio, all received now
        clock.received(640)
    metrics.observe(TranscriptChunk(turn_id=1, text="hi", is_final=True, end_ms=1000))
    metrics.observe(TokenChunk(turn_id=3, token="Hello"))
    metrics.observe(AudioChunk(turn_id=3, payload=FRAME))
    event = metrics.finish(3, interrupted=False)
    figures = [event[k] for k in ("asr_final_ms", "first_token_ms", "first_audio_ms")]
    assert all(isinstance(v, float) and 0 <= v < 1000 for v in figures), event
    assert event["turn_id"] == 3 and event["interrupted"] is False
    # a typed turn is measured from when its text went out; no audio clock involved
    metrics.typed()
    metrics.observe(TranscriptChunk(turn_id=4, text="typed", is_final=True, confidence=1.0))
    event = metrics.finish(4, interrupted=True)
    assert isinstance(event["asr_final_ms"], float) and event["first_token_ms"] is None
    assert event["interrupted"] is True


def test_the_audio_clock_counts_chunks_that_are_not_whole_milliseconds() -> None:
    from gateway.latency import AudioClock

    clock = AudioClock()
    for _ in range(1000):  # 18.75 ms chunks, as a 48 kHz -> 16 kHz resampler hands them on
        clock.received(600)
    assert clock._ends_ms[-1] == 18750.0  # not 18000: rounding each chunk down drifts
