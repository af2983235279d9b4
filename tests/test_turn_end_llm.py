"""The LLM end-of-turn judge (asr_worker/turn_end_llm.py) with the real GGUF model: whole
requests end the turn, phrases cut mid-sentence do not, the KV-cache reuse changes no score,
languages the model cannot read fall back to the silence timeout, and in an `AsrSession` with
the real Whisper a pause mid-sentence waits while a whole request ends at the first pause."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from asr_worker.session import AsrSession, Transcript
from asr_worker.turn_end import load_turn_end
from asr_worker.turn_end_llm import LlmTurnEnd, normalize, split_template
from asr_worker.turn_end_text import TextGuarded
from asr_worker.wer import normalize as normalize_words
from common.settings import Settings
from tests import turn_pause_set

NO_AUDIO = np.zeros(0, np.float32)


@pytest.fixture(scope="module")
def judge(settings: Settings) -> LlmTurnEnd:
    """As the ASR worker loads it (INZWA_TURN_END=llm), without the text guard: the model's own
    verdict, calibrated so that INZWA_TURN_END_THRESHOLD (0.5) is its decision point."""
    loaded = load_turn_end(settings.model_copy(update={"turn_end": "llm",
                                                       "turn_end_text_guard": False}))
    assert isinstance(loaded, LlmTurnEnd)
    return loaded


def _questions(fixtures_dir: Path) -> dict[str, str]:
    lines = (fixtures_dir / "synthetic.tsv").read_text().splitlines()[1:]
    return dict(line.split("\t", 1) for line in lines if line.startswith("q_en"))


def test_complete_questions_end_the_turn(judge: LlmTurnEnd, settings: Settings,
                                         fixtures_dir: Path) -> None:
    texts = [*_questions(fixtures_dir).values(), "What time is it?", "Tell me a joke."]
    for text in texts:
        assert judge.probability(NO_AUDIO, text, "en") >= settings.turn_end_threshold, text


def test_phrases_cut_mid_sentence_do_not(judge: LlmTurnEnd, settings: Settings,
                                         fixtures_dir: Path) -> None:
    cuts = ["I want to go to the", "What is the capital city of"]
    cuts += [" ".join(text.split()[:4]) for text in _questions(fixtures_dir).values()]
    cuts += [before for before, _ in turn_pause_set.PAUSED[:8]]
    for text in cuts:
        assert judge.probability(NO_AUDIO, text, "en") < settings.turn_end_threshold, text


def test_it_reads_the_words_not_whispers_punctuation(judge: LlmTurnEnd) -> None:
    # Whisper writes a fragment with a full stop as often as with "..."; the judge strips both.
    assert normalize("My favourite food is.") == normalize("my favourite food is...")
    assert judge.probability(NO_AUDIO, "My favourite food is.", "en") == pytest.approx(
        judge.probability(NO_AUDIO, "my favourite food is", "en"))
    assert judge.probability(NO_AUDIO, "", "en") == 0.0
    # A monologue longer than the judge's context: only its last words are read.
    assert 0.0 <= judge.probability(NO_AUDIO, "and then we went to the " * 200, "en") < 0.5


def test_the_cached_prefix_changes_no_score(judge: LlmTurnEnd) -> None:
    text = "Can you tell me what the weather is like tomorrow"
    warm = judge.probability(NO_AUDIO, text, "en")
    judge.probability(NO_AUDIO, "Can you tell me", "en")  # shares a prefix of user words
    judge._llama.reset()  # nothing in the KV cache: the whole prompt is evaluated again
    cold = judge.probability(NO_AUDIO, text, "en")
    assert warm == pytest.approx(cold, abs=1e-4)


def test_the_template_is_cut_before_the_end_of_the_user_turn(judge: LlmTurnEnd) -> None:
    head, tail = split_template(judge._template, "Be brief.")
    assert head.endswith("<|im_start|>user\n") and "Be brief." in head
    assert tail.startswith("<|im_end|>")


def test_shona_and_other_languages_keep_the_silence_timeout(judge: LlmTurnEnd,
                                                            settings: Settings) -> None:
    assert judge.supports("en") and not judge.supports("sn")
    assert judge.info()["engine"] == "llm" and judge.info()["sha256"]
    guarded = load_turn_end(settings.model_copy(update={"turn_end": "llm"}))
    assert isinstance(guarded, TextGuarded) and not guarded.supports("sn")


def _finals(session: AsrSession, pcm: bytes) -> list[tuple[int, str]]:
    """(stream ms when it was sent, text) of the finals for audio fed in 20 ms frames."""
    return [((index + 1) * 20, event.text)
            for index, offset in enumerate(range(0, len(pcm), 640))
            for event in session.feed(pcm[offset : offset + 640], partials=False)
            if isinstance(event, Transcript) and event.is_final]


@pytest.mark.skipif(not turn_pause_set.available(), reason="espeak-ng not installed")
def test_in_the_asr_session_a_pause_mid_sentence_waits_and_a_question_ends_at_once(
    judge: LlmTurnEnd, whisper_engine, settings: Settings
) -> None:
    def session() -> AsrSession:  # as the worker runs it with INZWA_TURN_END=llm, wait 1100
        return AsrSession(whisper_engine, language="en", silence_ms=settings.vad_silence_ms,
                          pause_ms=settings.early_pause_ms, turn_end=judge,
                          turn_end_threshold=settings.turn_end_threshold, turn_end_wait_ms=1100)

    item = turn_pause_set.paused_item(0, 700)  # "I want to go to ... the market"
    finals = _finals(session(), item.pcm)
    assert len(finals) == 1 and "market" in normalize_words(finals[0][1]), finals
    done = turn_pause_set.generate()[-1]  # "Thank you very much."
    sent_at, text = _finals(session(), done.pcm)[0]
    assert "thank" in normalize_words(text)
    assert sent_at < done.speech_end_ms + settings.vad_silence_ms  # before the plain timeout
