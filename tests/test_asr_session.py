"""AsrSession: turn logic with a scripted fake engine, and one real streaming run.

The fake's hypotheses depend only on what it is given (or on the call count), and the VAD is
deterministic, so every expectation here is exact up to the 20 ms frame grid.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from asr_worker.interface import Transcription
from asr_worker.session import (
    STARVED_PARTIAL_MS,
    AsrEvent,
    AsrSession,
    LocalAgreement,
    Paused,
    SpeechResumed,
    SpeechStarted,
    Transcript,
    stream_turn,
)
from asr_worker.wer import normalize
from common.audio import read_wav

BYTES_PER_MS = 32
WORDS = [f"w{i}" for i in range(1, 40)]


def silence(ms: int) -> bytes:
    return b"\0" * (ms * BYTES_PER_MS)


class FakeEngine:
    """Answers with `respond(seconds_of_audio, call_index)` and records every call."""

    partials = True

    def __init__(self, respond: Callable[[float, int], str]) -> None:
        self.respond = respond
        self.durations: list[float] = []
        self.languages: list[str | None] = []

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcription:
        assert audio.dtype == np.float32
        self.durations.append(audio.size / 16000)
        self.languages.append(language)
        text = self.respond(audio.size / 16000, len(self.durations) - 1)
        return Transcription(text, 0.9, language or "en")


def growing(seconds: float, _call: int) -> str:
    """Two words per second of audio: each hypothesis extends the previous one."""
    return " ".join(WORDS[: int(seconds * 2)])


def feed(session: AsrSession, pcm: bytes, chunk: int = 640) -> list[AsrEvent]:
    events: list[AsrEvent] = []
    for offset in range(0, len(pcm), chunk):
        events.extend(session.feed(pcm[offset : offset + chunk]))
    return events


def partials(events: list[AsrEvent]) -> list[Transcript]:
    return [e for e in events if isinstance(e, Transcript) and not e.is_final]


def finals(events: list[AsrEvent]) -> list[Transcript]:
    return [e for e in events if isinstance(e, Transcript) and e.is_final]


@pytest.fixture(scope="module")
def speech(fixtures_dir: Path) -> bytes:
    """LJ001-0006: 5.7 s of continuous speech (one VAD segment)."""
    return read_wav(fixtures_dir / "LJ001-0006.wav")[0]


@pytest.fixture(scope="module")
def short_speech(fixtures_dir: Path) -> bytes:
    """LJ001-0002: 1.9 s of speech."""
    return read_wav(fixtures_dir / "LJ001-0002.wav")[0]


# --- LocalAgreement on its own -------------------------------------------------------------------


def test_local_agreement_shows_only_words_two_hypotheses_agree_on() -> None:
    agreement = LocalAgreement()
    shown = [
        agreement.update(h)
        for h in [
            "the",
            "the cap",  # agrees on "the"
            "the cat sat",  # "cap" vs "cat": nothing new
            "the cat sat on",  # agrees on "the cat sat"
            "a cat",  # Whisper changed its mind: keep showing what is shown
            "the cat sat on the mat.",  # agrees with "a cat" on nothing
            "The cat sat on the mat, and",  # case and punctuation do not break agreement
        ]
    ]
    assert shown == [None, "the", None, "the cat sat", None, None, "The cat sat on the mat,"]


def test_local_agreement_never_shrinks() -> None:
    agreement = LocalAgreement()
    agreement.update("one two three")
    assert agreement.update("one two three four") == "one two three"
    assert agreement.update("one two") is None
    assert agreement.update("one two") is None  # agreeing on less than is shown: no change
    assert agreement.update("one two three four five") is None  # "one two" vs this: 2 words
    assert agreement.update("one two three four five six") == "one two three four five"


# --- partial cadence and stability ------------------------------------------------------------------


@pytest.mark.parametrize("chunk_ms", [20, 100])
def test_partials_run_every_interval_of_speech(speech: bytes, chunk_ms: int) -> None:
    engine = FakeEngine(growing)
    session = AsrSession(engine, language="en", partial_interval_ms=300)
    events = feed(session, silence(500) + speech + silence(1000), chunk_ms * BYTES_PER_MS)

    started = [e for e in events if isinstance(e, SpeechStarted)]
    assert len(started) == 1 and abs(started[0].at_ms - 500) <= 60
    attempts = engine.durations[:-1]  # the last call is the final
    assert len(attempts) >= 15
    # First attempt once 0.5 s of voiced speech is in (plus the 0.3 s pre-roll: 0.8 s of audio;
    # a little later when the frames around the 0.5 s mark are unvoiced), then one per 300 ms.
    assert 0.8 - 1e-9 <= attempts[0] <= 1.1
    assert np.allclose(np.diff(attempts), 0.3)
    shown = partials(events)
    assert len(shown) >= 10
    assert all(np.diff([p.end_ms for p in shown]) % 300 == 0)
    assert all(p.start_ms == started[0].at_ms for p in shown)
    assert set(engine.languages) == {"en"}


def test_partial_cadence_with_chunks_off_the_interval(speech: bytes) -> None:
    engine = FakeEngine(growing)
    session = AsrSession(engine, partial_interval_ms=300)
    feed(session, silence(500) + speech + silence(1000), 160 * BYTES_PER_MS)
    gaps = np.diff(engine.durations[:-1])
    assert len(gaps) >= 10
    assert all(0.3 - 1e-6 <= gap <= 0.3 + 0.16 + 1e-6 for gap in gaps)


def test_partials_grow_and_never_flicker(speech: bytes) -> None:
    # Every hypothesis ends with a word that changes on each call, like a word Whisper hears
    # only half of: LocalAgreement must never show it, and must only ever add words.
    def flickering(seconds: float, call: int) -> str:
        return " ".join([*WORDS[: int(seconds * 2)], f"maybe{call}"])

    engine = FakeEngine(flickering)
    session = AsrSession(engine, partial_interval_ms=300)
    events = feed(session, silence(500) + speech + silence(1000))
    shown = [p.text.split() for p in partials(events)]
    assert len(shown) >= 5
    for before, after in itertools.pairwise(shown):
        assert len(after) > len(before) and after[: len(before)] == before
    assert not any(word.startswith("maybe") for words in shown for word in words)
    # The final is the full transcription of the segment, not the agreed prefix.
    (final,) = finals(events)
    assert final.text.split()[-1].startswith("maybe")
    assert len(final.text.split()) > len(shown[-1])


def test_no_partial_for_speech_under_half_a_second(short_speech: bytes) -> None:
    engine = FakeEngine(growing)
    session = AsrSession(engine)
    speech_400ms = short_speech[100 * BYTES_PER_MS : 500 * BYTES_PER_MS]
    events = feed(session, silence(500) + speech_400ms + silence(1000))
    assert len(engine.durations) == 1  # only the final
    assert partials(events) == []
    assert len(finals(events)) == 1


# --- finals ----------------------------------------------------------------------------------------


def test_final_on_silence(short_speech: bytes) -> None:
    engine = FakeEngine(growing)
    session = AsrSession(engine, silence_ms=500)
    events = feed(session, silence(500) + short_speech)
    assert finals(events) == []  # still inside the utterance
    events = feed(session, silence(600))
    (final,) = finals(events)
    assert final.text == " ".join(WORDS[: int(engine.durations[-1] * 2)])
    assert final.confidence == 0.9 and final.language == "en"
    assert abs(final.start_ms - 500) <= 60
    assert abs(final.end_ms - (500 + len(short_speech) // BYTES_PER_MS)) <= 120
    # The segment is final once; the silence after it holds nothing to transcribe.
    calls = len(engine.durations)
    assert session.end_turn() == []
    assert len(engine.durations) == calls


def test_final_on_end_turn(short_speech: bytes) -> None:
    engine = FakeEngine(growing)
    session = AsrSession(engine)
    events = feed(session, silence(500) + short_speech)
    assert finals(events) == []
    (final,) = finals(session.end_turn())
    assert final.text
    assert abs(final.start_ms - 500) <= 60
    assert final.end_ms == session._detector.elapsed_ms
    assert session.end_turn() == []  # nothing is transcribed twice


def test_end_turn_finalises_audio_the_vad_never_opened(short_speech: bytes) -> None:
    # A VAD that cannot open (min_speech longer than the speech) stands in for a soft talker.
    engine = FakeEngine(growing)
    session = AsrSession(engine, min_speech_ms=10_000)
    assert feed(session, silence(700) + short_speech + silence(300)) == []
    (final,) = finals(session.end_turn())
    assert final.text
    speech_ms = len(short_speech) // BYTES_PER_MS
    # The clip fades out below the loudness threshold over its last ~80 ms.
    assert abs(final.start_ms - 700) <= 40
    assert abs(final.end_ms - (700 + speech_ms)) <= 100
    # The loud part plus a 300 ms pre-roll and a 200 ms tail, not the whole buffer.
    loud_ms = final.end_ms - final.start_ms
    assert engine.durations == [pytest.approx((loud_ms + 500) / 1000, abs=0.001)]
    assert session.end_turn() == []


def test_end_turn_on_silence_returns_nothing() -> None:
    engine = FakeEngine(growing)
    session = AsrSession(engine)
    assert feed(session, silence(2000)) == []
    assert session.end_turn() == []
    assert engine.durations == []


def test_empty_final_is_not_emitted(short_speech: bytes) -> None:
    engine = FakeEngine(lambda _seconds, _call: "")
    session = AsrSession(engine)
    events = feed(session, silence(500) + short_speech + silence(1000))
    events += session.end_turn()
    assert [type(e) for e in events] == [SpeechStarted]
    assert len(engine.durations) >= 2  # it did try


def test_max_audio_caps_the_segment(speech: bytes) -> None:
    engine = FakeEngine(growing)
    session = AsrSession(engine, max_audio_s=2.0)
    events = feed(session, silence(500) + speech + silence(1000))
    done = finals(events)
    assert len(done) >= 2
    assert max(engine.durations) <= 2.0 + 1e-9
    # Each capped segment is followed by a new one while the speaker goes on.
    assert sum(isinstance(e, SpeechStarted) for e in events) == len(done)
    assert all(b.start_ms >= a.end_ms for a, b in itertools.pairwise(done))


def test_timestamps_are_relative_to_the_stream_start(short_speech: bytes) -> None:
    engine = FakeEngine(growing)
    session = AsrSession(engine)
    first = silence(500) + short_speech + silence(1000)
    events = feed(session, first + silence(1500) + short_speech + silence(1000))
    done = finals(events)
    assert len(done) == 2
    second_onset = len(first) // BYTES_PER_MS + 1500
    assert abs(done[1].start_ms - second_onset) <= 60


def test_reset_drops_the_utterance(short_speech: bytes) -> None:
    engine = FakeEngine(growing)
    session = AsrSession(engine)
    feed(session, silence(500) + short_speech)
    session.reset()
    assert feed(session, silence(1000)) == []
    assert session.end_turn() == []


def test_an_engine_without_partials_gets_only_the_final(speech: bytes) -> None:
    """A remote engine (`partials = False`): one request per utterance, not three a second."""
    engine = FakeEngine(growing)
    engine.partials = False
    events = feed(AsrSession(engine), silence(500) + speech + silence(1000))
    assert partials(events) == []
    assert len(finals(events)) == 1 and len(engine.durations) == 1


def test_stream_turn_ends_the_turn(short_speech: bytes) -> None:
    engine = FakeEngine(growing)
    chunks = [short_speech[i : i + 640] for i in range(0, len(short_speech), 640)]
    events = list(stream_turn(engine, chunks, language="sn"))
    assert isinstance(events[0], SpeechStarted)
    assert len(finals(events)) == 1 and finals(events)[0].language == "sn"


# --- the real engine ----------------------------------------------------------------------------------


@pytest.mark.models
def test_real_engine_streams_partials_then_final(fixtures_dir: Path, whisper_engine) -> None:
    pcm, _ = read_wav(fixtures_dir / "q_en_capital.wav")
    chunks = [pcm[i : i + 640] for i in range(0, len(pcm), 640)]
    events = list(stream_turn(whisper_engine, chunks, language="en"))

    assert isinstance(events[0], SpeechStarted)
    done = finals(events)
    assert len(done) == 1
    final_index = events.index(done[0])
    assert partials(events[:final_index]), "expected at least one partial before the final"
    text = normalize(done[0].text)
    assert "capital" in text and "zimbabwe" in text
    assert 0.0 < done[0].confidence <= 1.0 and done[0].language == "en"


# --- pauses: the early-reply hypothesis ---------------------------------------------------------


def pausing_session(engine: FakeEngine, pause_ms: int = 200) -> AsrSession:
    return AsrSession(engine, language="en", silence_ms=500, pause_ms=pause_ms)


def test_a_pause_gives_a_hypothesis_and_the_final_reuses_it(short_speech: bytes) -> None:
    engine = FakeEngine(lambda seconds, call: "will it rain")
    session = pausing_session(engine)
    events = feed(session, short_speech + silence(300))
    paused = [e for e in events if isinstance(e, Paused)]
    assert len(paused) == 1 and paused[0].text == "will it rain"
    calls = len(engine.durations)
    events = feed(session, silence(600))
    assert [e.text for e in finals(events)] == ["will it rain"]
    assert len(engine.durations) == calls  # the final cost no transcription


def test_speech_after_a_pause_resumes_and_the_final_hears_everything(
    short_speech: bytes,
) -> None:
    engine = FakeEngine(lambda seconds, call: f"said {seconds:.1f}")
    session = pausing_session(engine)
    events = feed(session, short_speech + silence(300) + short_speech + silence(700))
    kinds = [type(e).__name__ for e in events if not isinstance(e, Transcript) or e.is_final]
    assert kinds == ["SpeechStarted", "Paused", "SpeechResumed", "Paused", "Transcript"]
    first, second = [e for e in events if isinstance(e, Paused)]
    final = finals(events)[0]
    assert final.text == second.text != first.text  # it hears the speech after the pause


def test_a_backlog_fed_at_once_finds_the_pause_inside_it(short_speech: bytes) -> None:
    """A caller behind real time feeds pause and resumed speech in one call: the pause is still
    seen where it is in the audio (the early reply and the end-of-turn model depend on it)."""
    audio = short_speech + silence(300) + short_speech + silence(700)
    kinds = []
    for chunk in (640, len(audio)):  # frame by frame, then all at once
        session = pausing_session(FakeEngine(lambda seconds, call: f"said {seconds:.1f}"))
        events = feed(session, audio, chunk=chunk)
        kinds.append([type(e).__name__ for e in events if not isinstance(e, Transcript) or e.is_final])
    assert kinds[0] == kinds[1] == ["SpeechStarted", "Paused", "SpeechResumed", "Paused", "Transcript"]


def test_no_pause_hypotheses_when_early_reply_is_off(short_speech: bytes) -> None:
    session = AsrSession(FakeEngine(growing), language="en", silence_ms=500, pause_ms=None)
    events = feed(session, short_speech + silence(700))
    assert not any(isinstance(e, Paused | SpeechResumed) for e in events)
    assert len(finals(events)) == 1


def test_a_caller_behind_real_time_can_skip_partials(speech: bytes) -> None:
    engine = FakeEngine(growing)
    session = AsrSession(engine, language="en", silence_ms=500)
    events = session.feed(speech, partials=False) + session.feed(silence(700), partials=False)
    assert partials(events) == [] and len(finals(events)) == 1
    assert len(engine.durations) == 1  # only the final was transcribed


def test_a_congested_caller_still_sees_a_partial_every_starved_stretch(speech: bytes) -> None:
    engine = FakeEngine(growing)
    session = AsrSession(engine, language="en", partial_interval_ms=300)
    pcm = silence(500) + speech + silence(1000)
    events = [e for at in range(0, len(pcm), 640)
              for e in session.feed(pcm[at:at + 640], congested=True)]
    attempts = engine.durations[:-1]  # the last call is the final
    # 5.7 s of speech: one try per 1.5 s of it instead of one per 300 ms (~17)
    assert 2 <= len(attempts) <= 4, attempts
    assert all(gap >= STARVED_PARTIAL_MS / 1000 - 1e-6 for gap in np.diff(attempts)), attempts
    assert partials(events) and len(finals(events)) == 1


def test_partials_turned_off_stay_off_however_long_the_congestion(speech: bytes) -> None:
    engine = FakeEngine(growing)
    session = AsrSession(engine, language="en", silence_ms=500)
    events = session.feed(speech + silence(700), partials=False, congested=True)
    assert partials(events) == [] and len(engine.durations) == 1  # only the final


@pytest.mark.parametrize(
    ("shown", "final", "settled"),
    [
        ("a clever hare and a", "a clever hare and lazy lion", "a clever hare and a lazy lion"),
        ("one two three", "one two three four", "one two three four"),
        ("a b c", "a x b c d", "a b c d"),
        ("what is the", "What is the capital?", "what is the capital?"),
    ],
)
def test_the_final_never_takes_back_a_shown_word(shown: str, final: str, settled: str) -> None:
    agreement = LocalAgreement()
    agreement.update(shown)
    assert agreement.update(shown) == shown
    assert agreement.settle(final) == settled


def test_a_word_the_audio_may_have_cut_waits_for_audio_after_it() -> None:
    """Two decodes cut inside "Zimbabwe" agreed on "unzimbab?"; shown, it would stay in the
    final before the full word ("city unzimbab? unzimbabwe?"). The last word of audio that
    still ends in speech is held back; once the audio ends in silence it may show."""
    agreement = LocalAgreement()
    cut = "What is the capital city unzimbab?"
    assert agreement.update(cut, open_end=True) is None
    assert agreement.update(cut, open_end=True) == "What is the capital city"
    whole = "What is the capital city unzimbabwe?"
    assert agreement.update(whole, open_end=False) is None  # it changed its mind: not agreed yet
    assert agreement.settle(whole) == whole


class SlowEngine(FakeEngine):
    """FakeEngine whose every decode takes at least `cost_s` of wall time."""

    def __init__(self, cost_s: float) -> None:
        super().__init__(growing)
        self.cost_s = cost_s

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcription:
        time.sleep(self.cost_s)
        return super().transcribe(audio, language)


def test_partials_thin_out_to_stay_within_their_budget(speech: bytes) -> None:
    """Decodes of at least 60 ms with a 0.1 budget: once words show (the third decode here: the
    last word of an open end waits), a partial at most every 600 ms of audio, where the 100 ms
    interval alone would run one every 100 ms; the final still comes."""
    pcm = silence(500) + speech + silence(1000)
    budgeted = SlowEngine(0.06)
    events = feed(AsrSession(budgeted, language="en", partial_interval_ms=100, partial_budget=0.1), pcm)
    unbudgeted = SlowEngine(0.0)
    feed(AsrSession(unbudgeted, language="en", partial_interval_ms=100), pcm)
    gaps = np.diff(budgeted.durations[:-1])
    assert np.allclose(gaps[:2], 0.1), gaps  # the first words come at the interval's pace
    assert len(gaps) >= 5 and all(gap >= 0.6 - 1e-6 for gap in gaps[2:]), gaps
    assert len(unbudgeted.durations) >= 3 * len(budgeted.durations)
    assert np.allclose(np.diff(unbudgeted.durations[:-1]), 0.1)
    assert len(finals(events)) == 1 and partials(events)


def test_a_new_utterance_starts_at_the_plain_interval(speech: bytes, short_speech: bytes) -> None:
    """The budget's wider gap belongs to the utterance that cost it: the next one's first
    partial comes at 0.5 s of voiced speech again, not 1.2 s (60 ms / 0.05) after its onset."""
    engine = SlowEngine(0.06)
    session = AsrSession(engine, language="en", partial_interval_ms=100, partial_budget=0.05)
    feed(session, silence(300) + speech + silence(1000))
    assert np.diff(engine.durations[:-1])[2:].min() >= 1.2 - 1e-6  # the first utterance's gap grew
    first = len(engine.durations)
    feed(session, short_speech + silence(1000))
    assert len(engine.durations) - first >= 2  # a partial, then the final
    assert engine.durations[first] <= 1.1  # 0.3 s pre-roll + 0.5 s voiced, give or take a frame
