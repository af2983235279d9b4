"""The Piper engine: phoneme ids, framing and streaming with fakes; then the real voice."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from common.audio import frame_bytes, pcm16_to_float, rms_dbfs
from tts_worker.engine import (
    TTS,
    FrameBuffer,
    PiperVoice,
    VoiceConfig,
    limit_peak,
    phonemes_to_ids,
)

TINY_CONFIG: dict[str, Any] = {
    "audio": {"sample_rate": 16000},
    "espeak": {"voice": "en-us"},
    "inference": {"noise_scale": 0.5, "length_scale": 1.25, "noise_w": 0.75},
    "phoneme_type": "espeak",
    "phoneme_id_map": {"_": [0], "^": [1], "$": [2], " ": [3], "a": [4], "b": [5], ".": [6]},
}


@dataclass
class Node:
    name: str


class FakeSession:
    """Stands in for onnxruntime: a tone whose length follows the number of ids."""

    def __init__(self, samples_per_id: int = 400, amplitude: float = 0.5) -> None:
        self.samples_per_id = samples_per_id
        self.amplitude = amplitude
        self.feeds: list[dict[str, np.ndarray]] = []

    def get_inputs(self) -> list[Node]:
        return [Node("input"), Node("input_lengths"), Node("scales")]

    def run(self, output_names: Any, input_feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.feeds.append(input_feed)
        n = input_feed["input"].shape[1] * self.samples_per_id
        tone = self.amplitude * np.sin(np.arange(n, dtype=np.float32) * 0.05)
        return [tone.reshape(1, 1, 1, n).astype(np.float32)]


class FakePhonemizer:
    def __init__(self, sentences: Sequence[str]) -> None:
        self.sentences = list(sentences)

    def phonemize(self, text: str) -> list[str]:
        return list(self.sentences) if text else []


def fake_voice(sentences: Sequence[str], session: FakeSession | None = None) -> PiperVoice:
    config = VoiceConfig.from_dict(TINY_CONFIG)
    return PiperVoice(config, session or FakeSession(), FakePhonemizer(sentences))


# --- phoneme ids -----------------------------------------------------------------------------


def test_phoneme_ids_follow_pipers_scheme() -> None:
    ids, skipped = phonemes_to_ids("ab a.", TINY_CONFIG["phoneme_id_map"])
    # ^ then pad, then every phoneme followed by pad, $ last
    assert ids == [1, 0, 4, 0, 5, 0, 3, 0, 4, 0, 6, 0, 2]
    assert not skipped


def test_unknown_phonemes_are_skipped_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    voice = fake_voice([])
    with caplog.at_level(logging.DEBUG, logger="tts_worker.engines.piper"):
        ids = voice.phoneme_ids("aXbX")
    assert ids == [1, 0, 4, 0, 5, 0, 2]
    assert voice.skipped_phonemes == {"X": 2}
    assert any("X" in record.getMessage() for record in caplog.records)


def test_phoneme_ids_decompose_accented_symbols() -> None:
    config = dict(TINY_CONFIG)
    config["phoneme_id_map"] = {**TINY_CONFIG["phoneme_id_map"], "c": [7], "\u0327": [8]}
    voice = PiperVoice(VoiceConfig.from_dict(config), FakeSession(), FakePhonemizer([]))
    assert voice.phoneme_ids("ç") == [1, 0, 7, 0, 8, 0, 2]


def test_voice_config_reads_scales_and_rejects_text_phonemes() -> None:
    config = VoiceConfig.from_dict(TINY_CONFIG)
    assert (config.sample_rate, config.espeak_voice) == (16000, "en-us")
    assert (config.noise_scale, config.length_scale, config.noise_w) == (0.5, 1.25, 0.75)
    with pytest.raises(ValueError, match="phoneme_type"):
        VoiceConfig.from_dict({**TINY_CONFIG, "phoneme_type": "text"})


def test_a_model_without_piper_inputs_is_refused() -> None:
    class WrongModel(FakeSession):
        def get_inputs(self) -> list[Node]:
            return [Node("tokens")]

    with pytest.raises(ValueError, match="input"):
        PiperVoice(VoiceConfig.from_dict(TINY_CONFIG), WrongModel(), FakePhonemizer([]))


# --- audio handling --------------------------------------------------------------------------


def test_frame_buffer_cuts_exact_frames_and_pads_the_last() -> None:
    buffer = FrameBuffer(4)
    frames = [*buffer.push(b"abcdef"), *buffer.push(b"gh"), *buffer.push(b"i"), *buffer.flush()]
    assert frames == [b"abcd", b"efgh", b"i\x00\x00\x00"]
    assert list(buffer.flush()) == []


def test_limit_peak_only_scales_down() -> None:
    loud = np.array([0.0, 2.0, -4.0], dtype=np.float32)
    assert float(np.max(np.abs(limit_peak(loud)))) == pytest.approx(0.97)
    quiet = np.array([0.1, -0.2], dtype=np.float32)
    assert np.array_equal(limit_peak(quiet), quiet)


def test_stream_frames_are_exact_and_the_last_is_zero_padded() -> None:
    voice = fake_voice(["ab.", "a."])
    frames = list(voice.synthesize_stream("x", sample_rate=16000, frame_ms=20))
    assert frames and all(len(frame) == 640 for frame in frames)
    # (9 + 7 ids) * 400 samples + a 5 ms gap = 6480 samples = 20.25 frames of 320 samples
    assert len(frames) == 21
    assert frames[-1][:160] != bytes(160)  # a quarter frame of tone...
    assert frames[-1][160:] == bytes(480)  # ...then zeros


def test_stream_resamples_to_the_requested_rate() -> None:
    voice = fake_voice(["ab."])  # native 16 kHz, 9 ids * 400 = 3600 samples = 225 ms
    frames = list(voice.synthesize_stream("x", sample_rate=48000, frame_ms=20))
    assert all(len(frame) == frame_bytes(20, 48000) for frame in frames)
    assert len(frames) == 12  # 225 ms of audio in 20 ms frames


def test_loud_output_is_scaled_not_clipped() -> None:
    voice = fake_voice(["ab."], FakeSession(amplitude=3.0))
    audio = pcm16_to_float(b"".join(voice.synthesize_stream("x", sample_rate=22050)))
    assert 0.9 < float(np.max(np.abs(audio))) < 0.999


def test_stream_is_lazy_sentence_by_sentence() -> None:
    session = FakeSession()
    voice = fake_voice(["ab.", "a.", "b."], session)
    frames = voice.synthesize_stream("x")
    next(frames)
    assert len(session.feeds) == 1  # only the first sentence has been synthesized
    rest = list(frames)
    assert len(session.feeds) == 3 and rest


def test_feed_matches_pipers_inputs() -> None:
    session = FakeSession()
    fake_voice(["ab."], session).synthesize("x")
    (feed,) = session.feeds
    assert feed["input"].dtype == np.int64 and feed["input"].shape == (1, 9)
    assert feed["input_lengths"].tolist() == [9]
    assert feed["scales"].dtype == np.float32
    assert feed["scales"].tolist() == [0.5, 1.25, 0.75]


def test_empty_text_yields_nothing() -> None:
    voice = fake_voice([])
    assert list(voice.synthesize_stream("")) == []
    assert voice.synthesize("").size == 0


def test_piper_voice_satisfies_the_tts_protocol() -> None:
    voice: TTS = fake_voice(["a."])
    assert voice.sample_rate == 16000


# --- the real voice ----------------------------------------------------------------------------


def _timed_stream(voice: PiperVoice, text: str) -> tuple[list[bytes], float, float]:
    start = time.perf_counter()
    first = 0.0
    frames: list[bytes] = []
    for frame in voice.synthesize_stream(text, sample_rate=16000, frame_ms=20):
        if not frames:
            first = time.perf_counter() - start
        frames.append(frame)
    return frames, first, time.perf_counter() - start


@pytest.mark.models
def test_real_voice_speaks_a_sentence(piper_voice: PiperVoice) -> None:
    piper_voice.warmup()
    frames, _, elapsed = _timed_stream(piper_voice, "The capital of Zimbabwe is Harare.")
    assert frames and all(len(frame) == 640 for frame in frames)
    duration = len(frames) * 0.020
    assert 1.0 < duration < 5.0
    assert rms_dbfs(b"".join(frames)) > -35.0  # silence is below -60 dBFS
    assert not piper_voice.skipped_phonemes
    print(f"\n1 sentence: {duration:.2f} s of audio in {elapsed:.3f} s, "
          f"RTF {elapsed / duration:.3f}")


@pytest.mark.models
def test_real_voice_native_audio(piper_voice: PiperVoice) -> None:
    assert piper_voice.sample_rate == 22050
    audio = piper_voice.synthesize("Hello there. How are you?")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.8 < audio.size / 22050 < 4.0
    assert float(np.max(np.abs(audio))) <= 1.0


@pytest.mark.models
def test_real_voice_rtf_for_two_sentences(piper_voice: PiperVoice) -> None:
    piper_voice.warmup()
    frames, first, elapsed = _timed_stream(
        piper_voice, "The capital of Zimbabwe is Harare. It is a large and busy city."
    )
    duration = len(frames) * 0.020
    rtf = elapsed / duration
    print(f"\n2 sentences: {duration:.2f} s of audio in {elapsed:.3f} s, RTF {rtf:.3f}, "
          f"first frame after {first * 1000:.0f} ms")
    assert rtf < 1.0  # faster than real time, or the stream would stutter


@pytest.mark.models
def test_real_voice_first_frame_comes_before_the_whole_text(piper_voice: PiperVoice) -> None:
    piper_voice.warmup()
    text = (
        "The capital of Zimbabwe is Harare. It is the largest city in the country. "
        "Many people live and work there every day."
    )
    frames, first, total = _timed_stream(piper_voice, text)
    print(f"\n3 sentences: first frame after {first * 1000:.0f} ms, all {len(frames)} frames "
          f"after {total * 1000:.0f} ms")
    assert len(frames) * 0.020 > 3.0
    assert first < 0.6 * total  # the first of three sentences, not all of them
