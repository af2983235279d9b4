"""End of turn: the Smart Turn features and decisions on fixtures, the text guard, and the
session's rule (final at a short pause when the turn is complete, otherwise wait; a speaker who
goes on after an early end continues the same utterance), with the real Whisper and Smart Turn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from asr_worker.session import AsrSession, Transcript
from asr_worker.turn_end import load_turn_end
from asr_worker.turn_end_features import FRAMES, N_MELS, last_window, log_mel, turn_features
from asr_worker.turn_end_silence import SilenceOnly
from asr_worker.turn_end_smart import SmartTurn
from asr_worker.turn_end_text import TextGuarded, looks_unfinished
from asr_worker.wer import normalize
from common.audio import pcm16_to_float, read_wav
from common.models import UnknownEngine
from common.settings import Settings
from tests import turn_pause_set

SILENCE_MS = 400
WAIT_MS = 1000


def _clip(fixtures_dir: Path, name: str) -> np.ndarray:
    return pcm16_to_float(read_wav(fixtures_dir / name)[0])


@pytest.fixture(scope="module")
def smart_turn(settings: Settings) -> SmartTurn:
    judge = load_turn_end(settings.model_copy(update={"turn_end_text_guard": False}))
    assert isinstance(judge, SmartTurn)
    return judge


def test_features_are_whispers_log_mel_of_the_last_8_s(fixtures_dir: Path) -> None:
    from faster_whisper.feature_extractor import FeatureExtractor

    audio = _clip(fixtures_dir, "jfk.wav")  # 11 s: the first 3 s are dropped
    window = last_window(audio)
    assert window.size == 8 * 16000 and np.array_equal(window, audio[-window.size :])
    short = last_window(audio[:16000])  # 1 s: zeros in front, the speech at the end
    assert not short[: 7 * 16000].any() and np.array_equal(short[-16000:], audio[:16000])
    normalized = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
    reference = FeatureExtractor(feature_size=80, chunk_length=8)(normalized, padding=0)[:, :FRAMES]
    assert np.abs(log_mel(window) - reference).max() < 1e-3
    assert turn_features(audio).shape == (1, N_MELS, FRAMES)


def test_complete_sentences_are_complete(smart_turn: SmartTurn, fixtures_dir: Path) -> None:
    # Human speech ending on a full stop, and a synthetic question.
    for name in ("LJ001-0002.wav", "LJ001-0008.wav", "q_en_weather.wav"):
        score = smart_turn.probability(_clip(fixtures_dir, name), "", "en")
        assert score > 0.5, (name, score)


def test_a_clip_cut_mid_phrase_is_incomplete(smart_turn: SmartTurn, fixtures_dir: Path) -> None:
    # The LJ Speech sentences cut in the middle of a phrase, and two that end on a comma.
    for name in ("LJ001-0002.wav", "LJ001-0008.wav"):
        audio = _clip(fixtures_dir, name)
        cut = audio[: int(audio.size * 0.55)]
        assert smart_turn.probability(cut, "", "en") < 0.5, name
    for name in ("LJ001-0004.wav", "LJ001-0006.wav"):
        assert smart_turn.probability(_clip(fixtures_dir, name), "", "en") < 0.5, name


def test_languages_the_model_does_not_know_fall_back_to_the_silence_timeout(
    smart_turn: SmartTurn, settings: Settings
) -> None:
    assert smart_turn.supports("en") and not smart_turn.supports("sn")
    assert not SilenceOnly().supports("en")
    only_fr = load_turn_end(settings.model_copy(update={"turn_end_languages": "fr"}))
    assert only_fr.supports("fr") and not only_fr.supports("en")
    with pytest.raises(UnknownEngine, match="smart-turn"):
        load_turn_end(settings.model_copy(update={"turn_end": "nope"}))


def test_the_text_guard_reads_fragments(smart_turn: SmartTurn) -> None:
    assert looks_unfinished("I want to go to", "en")
    assert looks_unfinished("Tell me a story about...", "en")
    assert looks_unfinished("My favourite food is.", "en")
    assert looks_unfinished("Can you play some,", "en")
    assert not looks_unfinished("What is the capital city of Zimbabwe?", "en")
    assert not looks_unfinished("Please turn on the lights.", "en")
    assert not looks_unfinished("ndinoda kuenda", "sn")  # no list for Shona: not guarded
    guarded = TextGuarded(smart_turn)
    assert guarded.probability(np.zeros(16000, np.float32), "I am looking for", "en") == 0.0


def _finals(session: AsrSession, pcm: bytes) -> list[tuple[int, Transcript]]:
    """(stream ms when it was sent, final) for the audio fed in 20 ms frames."""
    out = []
    for index, offset in enumerate(range(0, len(pcm), 640)):
        for event in session.feed(pcm[offset : offset + 640], partials=False):
            if isinstance(event, Transcript) and event.is_final:
                out.append(((index + 1) * 20, event))
    return out


def _session(whisper_engine, settings: Settings, judge=None) -> AsrSession:  # type: ignore[no-untyped-def]
    return AsrSession(whisper_engine, language="en", silence_ms=SILENCE_MS,
                      pause_ms=settings.early_pause_ms, turn_end=judge, turn_end_wait_ms=WAIT_MS)


needs_espeak = pytest.mark.skipif(not turn_pause_set.available(), reason="espeak-ng not installed")


@needs_espeak
def test_a_mid_sentence_pause_waits_and_a_finished_request_ends_at_the_pause(
    whisper_engine, settings: Settings
) -> None:
    judge = load_turn_end(settings)
    # "My favourite food is ... rice and beans": 700 ms inside the sentence, longer than the
    # plain silence timeout, which ends the turn there without the model.
    item = turn_pause_set.paused_item(2, 700)
    plain = _finals(_session(whisper_engine, settings), item.pcm)
    assert len(plain) == 2 and plain[0][0] < item.pause_start_ms + item.pause_ms
    judged = _finals(_session(whisper_engine, settings, judge), item.pcm)
    assert len(judged) == 1, [f.text for _, f in judged]
    assert {"food", "beans"} <= set(normalize(judged[0][1].text).split())
    # A whole request: final at the short pause, before the plain silence timeout would fire.
    done = turn_pause_set.generate()[-1]  # "Thank you very much."
    sent_at, final = _finals(_session(whisper_engine, settings, judge), done.pcm)[0]
    assert normalize(final.text) == "thank you very much"
    assert sent_at < done.speech_end_ms + SILENCE_MS


@needs_espeak
def test_speech_soon_after_an_early_end_continues_the_same_utterance(
    whisper_engine, settings: Settings
) -> None:
    # "Can you tell me ... what the weather is like tomorrow": "Can you tell me?" is a whole
    # question to the model, so the turn ends at the pause (a premature commit); the rest,
    # said within the wait, comes as a final of the WHOLE utterance (the recovery).
    item = turn_pause_set.paused_item(1, 700)
    session = _session(whisper_engine, settings, load_turn_end(settings))
    finals = _finals(session, item.pcm)
    if len(finals) == 1:  # the model waited: nothing premature to recover from
        assert {"tell", "tomorrow"} <= set(normalize(finals[0][1].text).split())
        return
    assert len(finals) == 2 and session.continued == 1
    whole = set(normalize(finals[1][1].text).split())
    assert {"tell", "weather", "tomorrow"} <= whole
    assert finals[1][1].start_ms == finals[0][1].start_ms


class _Prompts:
    """The engine, recording how many prefixes each decode continued (words in its prompt)."""

    partials = True
    prompted = True

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine
        self.prefixes: set[str] = set()

    def transcribe(self, audio, language=None, prompt: str = ""):  # type: ignore[no-untyped-def]
        if prompt:
            self.prefixes.add(prompt)
        return self.engine.transcribe(audio, language, prompt=prompt)


def _utterance_finals(whisper_engine, pcm: bytes, *, tail: bool) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    # A long silence timeout: the whole clip is one utterance, however it pauses. The tail-only
    # session runs as in service, partials on (its prefixes are cut from what they decoded),
    # one every 600 ms: the cadence the service's partial budget (0.5) gives tails this long
    # (~0.3 s a decode here), fixed so the run is the same on any machine. The reference is
    # the plain decode of the whole utterance, without partials: they only cost decodes there
    # and add nothing to "the full decode".
    # Returns the text and how many prefixes were committed (distinct prompts decoded after).
    engine = _Prompts(whisper_engine)
    session = AsrSession(engine, language="en", silence_ms=1500, pause_ms=100,
                         tail_decode=tail, partial_interval_ms=600)
    pcm += b"\0" * 64000
    finals = [e.text for o in range(0, len(pcm), 640)
              for e in session.feed(pcm[o : o + 640], partials=tail)
              if isinstance(e, Transcript) and e.is_final]
    return normalize(" ".join(finals)), len(engine.prefixes)


def test_tail_only_decoding_gives_the_full_decodes_text(whisper_engine, fixtures_dir: Path) -> None:
    from asr_worker.wer import edit_distance

    # Clips where the tail session does commit a prefix (measured: jfk one at a pause and one
    # forced, LJ001-0004 one at a pause), checked: a clip without one would prove nothing about
    # tails (q_en_long and LJ001-0006 never pause long enough to commit).
    for name, commits in (("jfk.wav", 2), ("LJ001-0004.wav", 1)):
        pcm = read_wav(fixtures_dir / name)[0]
        text, committed = _utterance_finals(whisper_engine, pcm, tail=True)
        assert committed == commits and (text, 0) == _utterance_finals(whisper_engine, pcm, tail=False), name
    # 14 s without a real pause: prefixes are cut at quiet frames (measured: three). Measured:
    # one word of 36 differs at a cut ("than" / "then", said the same); allowed, nothing more.
    long = b"".join(read_wav(fixtures_dir / f"LJ001-00{n}.wav")[0] for n in ("04", "06", "13"))
    full = _utterance_finals(whisper_engine, long, tail=False)[0].split()
    tail, committed = _utterance_finals(whisper_engine, long, tail=True)
    assert committed >= 2 and edit_distance(full, tail.split()) <= 1, (full, tail, committed)
