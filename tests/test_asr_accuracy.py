"""Accuracy of the fast Whisper path against references and against stock faster-whisper.

The human clips (LJSpeech LJ001-*, jfk.wav) carry reference transcripts; the fast path must stay
within 0.02 WER of faster-whisper's own transcribe() on them. The guards that keep the trimmed
decode from looping are unit-tested here too, without a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from asr_worker.engine import (
    MIN_FRAMES,
    WINDOW_FRAMES,
    collapse_repeats,
    has_repetition_loop,
    max_new_tokens,
    padded_frames,
)
from asr_worker.wer import corpus_wer, normalize, word_error_rate
from common.audio import pcm16_to_float, read_wav


@dataclass(frozen=True)
class Clip:
    name: str
    reference: str
    audio: np.ndarray


def load_clips(fixtures_dir: Path, tsv: str) -> list[Clip]:
    rows = (fixtures_dir / tsv).read_text(encoding="utf-8").splitlines()[1:]
    clips = []
    for row in rows:
        name, reference = row.split("\t", 1)
        pcm, rate = read_wav(fixtures_dir / name)
        assert rate == 16000
        clips.append(Clip(name, reference, pcm16_to_float(pcm)))
    return clips


@pytest.fixture(scope="module")
def human_clips(fixtures_dir: Path) -> list[Clip]:
    clips = load_clips(fixtures_dir, "transcripts.tsv")
    assert {c.name for c in clips} >= {"jfk.wav", "LJ001-0002.wav"}
    return clips


@pytest.fixture(scope="module")
def fast_wer(human_clips: list[Clip], whisper_engine) -> float:
    return corpus_wer((c.reference, whisper_engine.transcribe(c.audio, "en").text) for c in human_clips)


@pytest.fixture(scope="module")
def stock_wer(human_clips: list[Clip], whisper_engine) -> float:
    return corpus_wer(
        (c.reference, whisper_engine.transcribe_stock(c.audio, "en").text) for c in human_clips
    )


@pytest.mark.models
def test_fast_path_word_error_rate(fast_wer: float) -> None:
    assert fast_wer <= 0.15, f"fast-path corpus WER {fast_wer:.3f}"


@pytest.mark.models
def test_fast_path_is_no_worse_than_stock(fast_wer: float, stock_wer: float) -> None:
    assert fast_wer <= stock_wer + 0.02, f"fast {fast_wer:.3f} vs stock {stock_wer:.3f}"


@pytest.mark.models
def test_every_human_clip_is_recognised(human_clips: list[Clip], whisper_engine) -> None:
    # Per clip, so one looping or truncated decode cannot hide inside a corpus average.
    for clip in human_clips:
        result = whisper_engine.transcribe(clip.audio, "en")
        ref_words = normalize(clip.reference).split()
        hyp_words = normalize(result.text).split()
        assert abs(len(hyp_words) - len(ref_words)) <= 2, (clip.name, result.text)
        assert not has_repetition_loop(result.text), clip.name
        assert 0.3 < result.confidence <= 1.0 and result.language == "en"


@pytest.mark.models
def test_language_is_detected_on_the_trimmed_features(human_clips: list[Clip], whisper_engine) -> None:
    jfk = next(c for c in human_clips if c.name == "jfk.wav")
    for language in (None, "auto"):
        detected = whisper_engine.transcribe(jfk.audio, language)
        assert detected.language == "en"
        assert normalize(detected.text) == normalize(whisper_engine.transcribe(jfk.audio, "en").text)


@pytest.mark.models
def test_silence_and_tiny_audio_give_empty_text(whisper_engine) -> None:
    for audio in (
        np.zeros(0, dtype=np.float32),
        np.zeros(800, dtype=np.float32),  # 50 ms
        np.zeros(32000, dtype=np.float32),  # 2 s of digital silence
    ):
        result = whisper_engine.transcribe(audio, "en")
        assert result.text == "" and result.confidence == 0.0


@pytest.mark.models
def test_loud_noise_gives_empty_text_without_the_stock_window(
    whisper_engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half-second bursts of full-scale white noise: no text, and one encoder pass each, even
    where the trimmed decode looped (it does on some: "NONONO..."), since the model first said
    there was no speech; the stock 30 s window, 8x the CPU, would give nothing either."""
    from asr_worker.engines import whisper

    encodes: list[int] = []
    loops: list[bool] = []
    encode, degenerate = whisper_engine._encode, whisper._degenerate
    monkeypatch.setattr(whisper_engine, "_encode", lambda *a: encodes.append(a[1]) or encode(*a))
    monkeypatch.setattr(whisper, "_degenerate", lambda d: loops.append(degenerate(d)) or loops[-1])
    rng = np.random.default_rng(2)
    for index in range(12):
        noise = rng.integers(-32767, 32768, 8000) / 32768
        encodes.clear()
        result = whisper_engine.transcribe(noise.astype(np.float32), [None, "sn", "en"][index % 3])
        assert result.text == "" and result.confidence == 0.0, (index, result)
        assert len(encodes) == 1 and encodes[0] < WINDOW_FRAMES, (index, encodes)
    assert any(loops)  # the case this is about did occur


@pytest.mark.models
def test_file_transcription_caps_tokens_by_the_audios_length(
    whisper_engine, human_clips: list[Clip], monkeypatch: pytest.MonkeyPatch
) -> None:
    """faster-whisper's own windows (uploads) get the token cap of the live path, per window:
    its temperature fallback otherwise decodes up to 448 tokens five more times on noise. The
    speech of a human clip still comes through whole."""
    caps: list[int] = []
    transcribe = whisper_engine._model.transcribe

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        caps.append(kwargs["max_new_tokens"])
        return transcribe(*args, **kwargs)

    monkeypatch.setattr(whisper_engine._model, "transcribe", spy)
    noise = np.random.default_rng(0).integers(-32767, 32768, 11200) / 32768
    whisper_engine.transcribe_file(noise.astype(np.float32), "sn")
    assert caps and set(caps) == {max_new_tokens(0.7)}
    clip = next(c for c in human_clips if c.name == "jfk.wav")
    caps.clear()
    heard = " ".join(s.text for s in whisper_engine.transcribe_file(clip.audio, "en").segments)
    assert caps == [max_new_tokens(clip.audio.size / 16000)]
    assert word_error_rate(clip.reference, heard) <= 0.1, heard


@pytest.mark.models
def test_audio_longer_than_one_window(fixtures_dir: Path, whisper_engine) -> None:
    # Distinct utterances (repeating one clip would test Whisper's habit of skipping repeated
    # content instead), 0.2 s apart: 34.7 s, so two windows, the cut falling inside a clip.
    clips = load_clips(fixtures_dir, "transcripts.tsv") + load_clips(fixtures_dir, "synthetic.tsv")
    by_name = {c.name: c for c in clips}
    names = ["LJ001-0004.wav", "LJ001-0006.wav", "jfk.wav", "LJ001-0013.wav", "LJ001-0002.wav",
             "LJ001-0008.wav", "q_en_long.wav"]
    gap = np.zeros(3200, dtype=np.float32)
    audio = np.concatenate([part for n in names for part in (by_name[n].audio, gap)])
    assert audio.size > 32 * 16000
    reference = " ".join(by_name[n].reference for n in names)
    text = whisper_engine.transcribe(audio, "en").text
    assert word_error_rate(reference, text) <= 0.15, text
    assert "lazy lion" in normalize(text)  # from the second window


# --- the guards, without a model ------------------------------------------------------------


def test_padded_frames_policy() -> None:
    assert padded_frames(10) == MIN_FRAMES  # short clips get the 5 s floor
    assert padded_frames(259) == MIN_FRAMES
    assert padded_frames(301) == MIN_FRAMES + 100  # 2 s of padding, rounded up to whole seconds
    assert padded_frames(1100) == 1300
    assert padded_frames(2900) == WINDOW_FRAMES  # never more than Whisper's window
    assert all(padded_frames(n) >= n for n in range(0, WINDOW_FRAMES + 1, 37))


def test_token_cap_scales_with_audio_length() -> None:
    assert max_new_tokens(0.5) < max_new_tokens(2.0) < max_new_tokens(10.0)
    # jfk.wav: 11 s and 25 reference tokens; the cap must leave plenty of room...
    assert max_new_tokens(11.0) >= 2 * 25
    # ...and stay far below Whisper's 224-token ceiling for a short turn.
    assert max_new_tokens(2.0) < 50


@pytest.mark.parametrize(
    "text",
    [
        "has never been surpassed, has never been surpassed, has never been surpassed",
        "Then in the same operations with ugly ones. Then in the same operations with ugly",
        "thank you thank you thank you",
        "no no no no no",
    ],
)
def test_repetition_loops_are_detected(text: str) -> None:
    assert has_repetition_loop(text)


@pytest.mark.parametrize(
    "text",
    [
        "And so my fellow Americans, ask not what your country can do for you, "
        "ask what you can do for your country.",
        "no, no, I said the other one",
        "thank you thank you",
        "very very good",
        "I said yes, I said",  # a short echo at the end is not a cut-off loop
        "",
    ],
)
def test_ordinary_speech_is_not_a_loop(text: str) -> None:
    assert not has_repetition_loop(text)


def test_collapse_repeats_keeps_one_copy() -> None:
    looped = "has never been surpassed, has never been surpassed, has never been surpassed,"
    assert collapse_repeats(looped) == "has never been surpassed,"
    assert collapse_repeats("go to the big shop the big shop please") == "go to the big shop please"
    cut = "Then in the same operations with ugly ones. Then in the same operations with ugly"
    assert collapse_repeats(cut) == "Then in the same operations with ugly ones."
    unchanged = "ask not what your country can do for you"
    assert collapse_repeats(unchanged) == unchanged
