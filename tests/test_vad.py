"""TurnDetector on real speech from the fixtures, joined with digital silence.

webrtcvad reacts to speech, not to energy, so tones or noise bursts would not test it: every
"speech" here is a slice of a human recording.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from asr_worker.vad import FRAME_MS, SpeechEnd, SpeechStart, TurnDetector, VadEvent
from common.audio import read_wav

BYTES_PER_MS = 32  # 16 kHz, 16-bit mono


def silence(ms: int) -> bytes:
    return b"\0" * (ms * BYTES_PER_MS)


def clip(fixtures_dir: Path, name: str, start_ms: int = 0, length_ms: int | None = None) -> bytes:
    pcm, rate = read_wav(fixtures_dir / name)
    assert rate == 16000
    end = None if length_ms is None else (start_ms + length_ms) * BYTES_PER_MS
    return pcm[start_ms * BYTES_PER_MS : end]


def feed_in_chunks(detector: TurnDetector, pcm: bytes, chunk: int) -> list[VadEvent]:
    events: list[VadEvent] = []
    for offset in range(0, len(pcm), chunk):
        events.extend(detector.feed(pcm[offset : offset + chunk]))
    return events


def kinds(events: list[VadEvent]) -> list[str]:
    return [type(event).__name__ for event in events]


@pytest.fixture(scope="module")
def utterance(fixtures_dir: Path) -> bytes:
    """LJ001-0002: 1.9 s of speech, voiced from its first frame to its last."""
    return clip(fixtures_dir, "LJ001-0002.wav")


def test_detects_start_and_end_of_speech(utterance: bytes) -> None:
    detector = TurnDetector(2, silence_ms=500, min_speech_ms=200)
    audio = silence(1000) + utterance + silence(1500)
    speech_end_ms = 1000 + len(utterance) // BYTES_PER_MS

    events: list[tuple[int, VadEvent]] = []
    for offset in range(0, len(audio), 640):
        for event in detector.feed(audio[offset : offset + 640]):
            events.append((detector.elapsed_ms, event))

    assert kinds([e for _, e in events]) == ["SpeechStart", "SpeechEnd"]
    (started_at, start), (ended_at, end) = events
    assert isinstance(start, SpeechStart) and isinstance(end, SpeechEnd)
    assert abs(start.at_ms - 1000) <= 60
    assert abs(end.at_ms - speech_end_ms) <= 120
    assert end.start_ms == start.at_ms
    assert end.reason == "silence"
    # Reported once min_speech_ms (+ webrtcvad's hangover) of voiced audio was heard...
    assert start.at_ms + 200 <= started_at <= start.at_ms + 400
    # ...and closed after silence_ms of unvoiced frames, not earlier, not much later.
    assert end.at_ms + 500 <= ended_at <= end.at_ms + 520
    assert not detector.in_speech


def test_segment_audio_has_the_preroll(utterance: bytes) -> None:
    detector = TurnDetector(2, silence_ms=500, min_speech_ms=200, preroll_ms=300, tail_ms=200)
    events = detector.feed(silence(1000) + utterance + silence(1000))
    end = events[-1]
    assert isinstance(end, SpeechEnd)
    segment_start_ms = end.start_ms - 300
    speech_offset = (1000 - segment_start_ms) * BYTES_PER_MS
    assert speech_offset > 0  # the audio starts before the onset...
    assert end.pcm[:speech_offset] == silence(1000)[:speech_offset]
    # ...and holds the speech from its very first sample, then a 200 ms tail.
    assert end.pcm[speech_offset : speech_offset + 3200] == utterance[:3200]
    assert len(end.pcm) == (end.at_ms + 200 - segment_start_ms) * BYTES_PER_MS


def test_open_segment_audio_is_available_while_speaking(utterance: bytes) -> None:
    detector = TurnDetector(2)
    detector.feed(silence(600) + utterance[: 1000 * BYTES_PER_MS])
    assert detector.in_speech
    onset = detector.onset_ms
    assert onset is not None and abs(onset - 600) <= 60
    pcm = detector.segment_pcm()
    assert len(pcm) == (detector.elapsed_ms - (onset - 300)) * BYTES_PER_MS
    start_ms, pending = detector.pending_pcm()
    assert (start_ms, pending) == (onset - 300, pcm)


def test_short_pause_keeps_one_segment_long_pause_splits(utterance: bytes) -> None:
    short_gap = silence(500) + utterance + silence(300) + utterance + silence(1000)
    assert kinds(TurnDetector(2, silence_ms=500).feed(short_gap)) == ["SpeechStart", "SpeechEnd"]

    long_gap = silence(500) + utterance + silence(800) + utterance + silence(1000)
    events = TurnDetector(2, silence_ms=500).feed(long_gap)
    assert kinds(events) == ["SpeechStart", "SpeechEnd", "SpeechStart", "SpeechEnd"]
    second_onset = 500 + len(utterance) // BYTES_PER_MS + 800
    assert isinstance(events[2], SpeechStart)
    assert abs(events[2].at_ms - second_onset) <= 60


@pytest.mark.parametrize("burst_ms", [60, 100, 140])
def test_bursts_shorter_than_min_speech_do_not_open(utterance: bytes, burst_ms: int) -> None:
    burst = utterance[100 * BYTES_PER_MS : (100 + burst_ms) * BYTES_PER_MS]
    detector = TurnDetector(2, min_speech_ms=200)
    assert detector.feed(silence(1000) + burst + silence(1000)) == []
    assert not detector.in_speech


def test_speech_just_over_min_speech_opens(utterance: bytes) -> None:
    burst = utterance[100 * BYTES_PER_MS : 400 * BYTES_PER_MS]  # 300 ms
    events = TurnDetector(2, min_speech_ms=200).feed(silence(1000) + burst + silence(1000))
    assert kinds(events) == ["SpeechStart", "SpeechEnd"]


def test_min_speech_is_configurable(utterance: bytes) -> None:
    burst = utterance[100 * BYTES_PER_MS : 400 * BYTES_PER_MS]  # 300 ms
    assert TurnDetector(2, min_speech_ms=600).feed(silence(500) + burst + silence(1000)) == []


@pytest.mark.parametrize("chunk", [2, 320, 640, 642, 1000, 4410, 32000])
def test_chunk_sizes_do_not_change_results(fixtures_dir: Path, chunk: int) -> None:
    jfk = clip(fixtures_dir, "jfk.wav")  # 11 s with pauses: several segments
    audio = silence(700) + jfk + silence(900)
    reference = TurnDetector(2).feed(audio)
    assert len(reference) >= 4  # the test means nothing without several events
    detector = TurnDetector(2)
    assert feed_in_chunks(detector, audio, chunk) == reference
    assert detector.elapsed_ms == len(audio) // BYTES_PER_MS // FRAME_MS * FRAME_MS


def test_segment_is_capped_at_max_length(fixtures_dir: Path) -> None:
    speech = clip(fixtures_dir, "LJ001-0006.wav")  # 5.7 s of continuous speech
    detector = TurnDetector(2, max_segment_ms=2000)
    events = detector.feed(silence(500) + speech + silence(1000))
    capped = [e for e in events if isinstance(e, SpeechEnd) and e.reason == "max_length"]
    assert len(capped) >= 2
    assert all(len(e.pcm) <= 2000 * BYTES_PER_MS for e in capped)
    # Speech goes on, so a new segment opens after each cap.
    assert kinds(events)[:3] == ["SpeechStart", "SpeechEnd", "SpeechStart"]


def test_close_ends_the_open_segment(utterance: bytes) -> None:
    detector = TurnDetector(2)
    audio = silence(500) + utterance
    detector.feed(audio)
    assert detector.in_speech
    ended = detector.close()
    assert ended is not None and ended.reason == "closed"
    assert ended.at_ms == detector.elapsed_ms
    # All the audio up to the moment of closing (whole frames only), pre-roll included.
    processed = detector.elapsed_ms * BYTES_PER_MS
    assert ended.pcm == audio[(ended.start_ms - 300) * BYTES_PER_MS : processed]
    assert not detector.in_speech
    assert detector.close() is None


def test_silence_only_is_buffered_without_events() -> None:
    detector = TurnDetector(2, buffer_ms=2000)
    assert detector.feed(silence(3000)) == []
    start_ms, pending = detector.pending_pcm()
    assert len(pending) == 2000 * BYTES_PER_MS  # bounded by buffer_ms
    assert start_ms == 1000


def test_reset_keeps_the_stream_clock(utterance: bytes) -> None:
    detector = TurnDetector(2)
    detector.feed(silence(500) + utterance[: 800 * BYTES_PER_MS])
    assert detector.in_speech
    detector.reset()
    assert not detector.in_speech and detector.pending_pcm()[1] == b""
    clock = detector.elapsed_ms
    events = detector.feed(silence(400) + utterance + silence(800))
    assert isinstance(events[0], SpeechStart)
    assert abs(events[0].at_ms - (clock + 400)) <= 60
