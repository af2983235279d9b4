"""One client's streaming recognition: VAD turn logic, stable partials and finals.

This is the stream adapter of the ASR seam (the shape of LiveKit Agents' STT StreamAdapter): it
turns ANY batch engine (`asr_worker.interface.ASR`: audio in, text out) into a streaming
recogniser with the VAD, so engines never implement streaming themselves. Partials run only for
engines that say they are cheap enough (`ASR.partials`); the others get finals and pauses.

Synchronous and single-threaded by design: the worker owns one `AsrSession` per client and calls
it from one thread, so the session needs no locks and tests drive it by feeding bytes.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from asr_worker.interface import Transcription
from asr_worker.vad import FRAME_BYTES, FRAME_MS, SpeechEnd, SpeechStart, TurnDetector
from asr_worker.wer import normalize
from common.audio import pcm16_to_float

if TYPE_CHECKING:
    from asr_worker.interface import ASR
    from asr_worker.turn_end import TurnEnd
    from common.settings import Settings

MIN_PARTIAL_MS = 500  # less voiced audio than this and Whisper mostly guesses
# Under congestion partials are skipped, but not for longer than this much speech: a person on a
# busy server still sees words appear (one decode per 1.5 s of audio keeps the CPU for catching up)
STARVED_PARTIAL_MS = 1500
# Push-to-talk turns the VAD never opened: frames louder than this count as sound (quiet-room
# noise sits well below; soft speech into a headset well above), and we need this much of it.
QUIET_SPEECH_DBFS = -50.0
QUIET_SPEECH_MIN_MS = 100
QUIET_PREROLL_MS = 300
QUIET_TAIL_MS = 200
PIECE_BYTES = 32 * 60  # feed() looks for pauses every 60 ms of audio (3 VAD frames)
# Commit the words before a pause once this much new audio came since the last commit: shorter
# tails decode worse, longer ones cost the final more (the encoder and decoder grow with them).
COMMIT_MIN_BYTES = 1000 * 32
# Speech without a pause: past this much uncommitted audio, cut at the quietest 20 ms frame
# (a gap between words, almost always) that leaves at least FORCE_KEEP_BYTES after it, so
# the final never decodes much more than this whatever the utterance's length. Measured on
# the fixtures: 4 s / 1 s left tails so short that Whisper echoed the prompt in them
# ("a clever hare and story about her"); 6 s / 2 s matched the full decode.
FORCE_COMMIT_BYTES = 6000 * 32
# Speech that starts this soon after a turn ended against (or without waiting for) the speaker
# continues that turn: the end was premature.
CONTINUE_WINDOW_MS = 1500
FORCE_KEEP_BYTES = 2000 * 32
# A partial decoded from audio ending in less silence than this may end inside a word.
WORD_END_SILENCE_MS = 100


@dataclass(frozen=True)
class SpeechStarted:
    at_ms: int


@dataclass(frozen=True)
class Transcript:
    text: str
    is_final: bool
    start_ms: int
    end_ms: int
    confidence: float
    language: str


@dataclass(frozen=True)
class Paused:
    """The speaker paused inside an utterance: `text` is all of it so far (for an early reply)."""

    text: str
    at_ms: int
    language: str


@dataclass(frozen=True)
class SpeechResumed:
    """Speech again after a Paused: the utterance goes on, the early reply is void."""

    at_ms: int


@dataclass
class _Hypothesis:
    text: str
    language: str
    confidence: float
    covers_ms: int  # stream time up to which the audio it transcribed reached
    upto: int = 0  # bytes of the utterance's audio it transcribed


@dataclass(frozen=True)
class _Carry:
    """An utterance the end-of-turn model ended at a pause: if the speaker goes on soon after,
    the next segment continues it (one transcript of both, answered as one turn)."""

    pcm: bytes
    start_ms: int
    end_ms: int


AsrEvent = SpeechStarted | Transcript | Paused | SpeechResumed


def _same_words(left: list[str], right: list[str]) -> bool:
    return len(left) == len(right) and all(
        normalize(a) == normalize(b) for a, b in zip(left, right, strict=True)
    )


def _common_prefix(left: list[str], right: list[str]) -> int:
    count = 0
    for a, b in zip(left, right, strict=False):
        if normalize(a) != normalize(b):
            break
        count += 1
    return count


class LocalAgreement:
    """LocalAgreement-2: a word is shown once two consecutive hypotheses agree on it and on
    everything before it. Shown words are never taken back, so the partial only grows."""

    def __init__(self) -> None:
        self._previous: list[str] | None = None
        self._committed: list[str] = []

    def update(self, hypothesis: str, *, open_end: bool = False) -> str | None:
        """Feed the next hypothesis; the new stable text when it grew, else None.

        `open_end`: the audio still ended in speech, so its last word may be cut off ("city
        unzimbab?" for "of Zimbabwe"); two cut decodes agree on it as often as not, and a shown
        word is never taken back, so it waits for audio that ends after it."""
        words = hypothesis.split()
        if open_end:
            words = words[:-1]
        previous, self._previous = self._previous, words
        if previous is None:
            return None
        agreed = _common_prefix(previous, words)
        committed = len(self._committed)
        # Grow only when the agreement extends what is shown; if Whisper changed its mind about
        # a word already shown, keep showing the old text until the final corrects it.
        if agreed <= committed or not _same_words(words[:committed], self._committed):
            return None
        self._committed = words[:agreed]
        return " ".join(self._committed)

    def settle(self, final: str) -> str:
        """The final transcript, kept consistent with what partials already showed: shown
        words are never taken back; the final's words after the last point where it agrees
        with them follow (Whisper's full pass sometimes drops or changes a shown word)."""
        words = final.split()
        if not self._committed:
            return final
        matcher = difflib.SequenceMatcher(
            a=[normalize(w) for w in self._committed], b=[normalize(w) for w in words], autojunk=False
        )
        ends = [block.b + block.size for block in matcher.get_matching_blocks() if block.size]
        tail = words[max(ends):] if ends else words[len(self._committed):]
        return " ".join([*self._committed, *tail])

    def reset(self) -> None:
        self._previous = None
        self._committed = []


def _quietest_frame(pcm: bytes, lo: int, hi: int) -> int:
    """Byte offset (frame-aligned) of the start of the lowest-energy 20 ms frame in [lo, hi)."""
    first, last = lo // FRAME_BYTES, max(lo // FRAME_BYTES + 1, hi // FRAME_BYTES)
    frames = pcm16_to_float(pcm[first * FRAME_BYTES : last * FRAME_BYTES]).reshape(-1, FRAME_BYTES // 2)
    return (first + int(np.argmin((frames * frames).mean(axis=1)))) * FRAME_BYTES


def _loud_span(pcm: bytes) -> tuple[int, int] | None:
    """First and last frame (indices) louder than QUIET_SPEECH_DBFS, if there are enough."""
    usable = len(pcm) - len(pcm) % FRAME_BYTES
    if usable == 0:
        return None
    frames = pcm16_to_float(pcm[:usable]).reshape(-1, FRAME_BYTES // 2)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    loud = np.flatnonzero(20.0 * np.log10(np.maximum(rms, 1e-6)) > QUIET_SPEECH_DBFS)
    if loud.size * FRAME_MS < QUIET_SPEECH_MIN_MS:
        return None
    return int(loud[0]), int(loud[-1])


class AsrSession:
    """Per-client turn logic: `feed` audio, get SpeechStarted, partial and final Transcripts."""

    def __init__(
        self, engine: ASR, *, language: str | None = None, silence_ms: int = 500,
        min_speech_ms: int = 200, partial_interval_ms: int = 300, max_audio_s: float = 30.0,
        aggressiveness: int = 2, pause_ms: int | None = None, turn_end: TurnEnd | None = None,
        turn_end_threshold: float = 0.5, turn_end_wait_ms: int | None = None,
        tail_decode: bool = True, partial_budget: float = 0.0,
    ) -> None:
        self._engine = engine
        # Tail-only decoding: the words before an inner pause are committed, and later decodes
        # run on the audio after it with those words as the prompt (engines that take one).
        self._tail_decode = tail_decode and bool(getattr(engine, "prompted", False))
        self._prefix_text = ""
        self._prefix_bytes = 0
        self._turn_end = turn_end  # None: turns end on the silence timeout only
        self._turn_end_threshold = turn_end_threshold
        self._turn_end_wait_ms = turn_end_wait_ms
        self.turn_end_scores: list[float] = []  # P(complete) at each pause judged (bench, tests)
        self._carry: _Carry | None = None
        self._held = False  # the model said "not done" at a pause of the open segment
        self.continued = 0  # early ends the speaker went on from (premature commits recovered)
        self._pause_ms = pause_ms  # None: no pause hypotheses (early reply off)
        self._latest: _Hypothesis | None = None  # the newest full transcription of the segment
        self._paused: _Hypothesis | None = None  # what the last Paused said, while still valid
        self._language = language
        self._partial_interval_ms = partial_interval_ms
        # The share of stream time this session's partial decodes may take once the utterance
        # shows words: after each partial the next waits until its cost is that share of the
        # audio since (0: every interval, whatever it costs). A partial decodes the whole open
        # utterance, so its cost grows with the utterance and with the machine's load:
        # partials thin out there, not the CPU left for finals and other sessions. Until the
        # first words show (two hypotheses must agree) they run at the interval: a short
        # question would otherwise show nothing on a busy machine.
        self._partial_budget = partial_budget
        self._partial_gap_ms = partial_interval_ms
        self._detector = TurnDetector(
            aggressiveness, silence_ms=silence_ms, min_speech_ms=min_speech_ms,
            max_segment_ms=int(max_audio_s * 1000), buffer_ms=int(max_audio_s * 1000),
        )
        self._agreement = LocalAgreement()
        self._last_attempt_ms = 0
        self._silence_ms = silence_ms  # each utterance's end-of-turn silence (set_silence_ms)

    def set_silence_ms(self, silence_ms: int) -> None:
        """A new end-of-turn silence for this session (a client's own, OpenAI Realtime
        turn_detection): it applies from the next utterance; the one open keeps its own."""
        self._silence_ms = silence_ms

    @classmethod
    def from_settings(cls, engine: ASR, settings: Settings, language: str | None = None,
                      turn_end: TurnEnd | None = None, silence_ms: int = 0) -> AsrSession:
        return cls(
            engine, language=language or settings.effective_asr_language,
            silence_ms=silence_ms or settings.vad_silence_ms, min_speech_ms=settings.vad_min_speech_ms,
            partial_interval_ms=settings.asr_partial_interval_ms,
            max_audio_s=settings.max_audio_seconds, aggressiveness=settings.vad_aggressiveness,
            pause_ms=settings.early_pause_ms if settings.early_reply or turn_end else None,
            turn_end=turn_end, turn_end_threshold=settings.turn_end_threshold,
            turn_end_wait_ms=settings.turn_end_wait_ms, tail_decode=settings.asr_tail_decode,
            partial_budget=settings.asr_partial_budget,
        )

    def feed(self, pcm: bytes, *, partials: bool = True, congested: bool = False) -> list[AsrEvent]:
        """Process PCM16 mono 16 kHz audio of any length.

        `partials=False`: none at all (the client or the overload ladder turned them off).
        `congested=True` when the caller is behind real time or busy elsewhere: a partial then
        would mostly be superseded by the next one, and its CPU is better spent catching up; yet
        one is still tried once STARVED_PARTIAL_MS of speech went by without one, so a person
        on a busy server still sees their words appear during a long utterance.
        """
        events: list[AsrEvent] = []
        # Pauses and ends of turn are looked for every PIECE of audio, not once per call: a call
        # carrying a backlog (the caller behind real time) must find the pause where it is in
        # the audio, as it would have fed frame by frame, not miss it under the speech after.
        for at in range(0, len(pcm), PIECE_BYTES):
            last = at + PIECE_BYTES >= len(pcm)
            piece = pcm[at:at + PIECE_BYTES]
            events.extend(self._feed_piece(piece, partials=partials and last, congested=congested))
        return events

    def _feed_piece(self, pcm: bytes, *, partials: bool, congested: bool) -> list[AsrEvent]:
        events: list[AsrEvent] = []
        for event in self._detector.feed(pcm):
            if isinstance(event, SpeechStart):
                self._continue_or_drop_carry(event.at_ms)
                self._drop_prefix()
                self._agreement.reset()
                self._latest = self._paused = None
                self._last_attempt_ms = event.at_ms
                self._partial_gap_ms = self._partial_interval_ms  # (a new utterance: cheap again)
                self._detector.set_silence_ms(self._silence_ms)  # (the detector's default otherwise)
                events.append(SpeechStarted(event.at_ms))
            else:
                events.extend(self._finish(event))
        if self._detector.in_speech:
            events.extend(self._pause_events())
            self._force_commit()
            wanted = self._paused is None and partials and self._engine.partials
            if wanted and (not congested or self._partial_starved()):
                events.extend(self._maybe_partial())
        return events

    def _pause_events(self) -> list[AsrEvent]:
        """A Paused once the silence inside speech reaches `pause_ms`; a SpeechResumed when
        the speaker goes on after it."""
        detector = self._detector
        if self._paused is not None and detector.silence_ms == 0:
            self._commit_prefix(self._paused)
            self._paused = None
            return [SpeechResumed(detector.elapsed_ms)]
        if self._pause_ms is None or self._paused is not None or detector.silence_ms < self._pause_ms:
            return []
        voiced_end = detector.last_voiced_ms or 0
        latest = self._latest
        if latest is None or latest.covers_ms < voiced_end:  # nothing recent enough to reuse
            latest = self._transcribe_segment()
        if not latest.text.strip():
            return []
        self._paused = latest
        if self._turn_complete(latest):
            ended = detector.end_at_pause()
            assert ended is not None
            carry = self._carry
            events = self._finish(ended)  # the final now: the pause's transcription, at no cost
            pcm = carry.pcm + ended.pcm if carry else ended.pcm
            self._carry = _Carry(pcm, carry.start_ms if carry else ended.start_ms, ended.at_ms)
            return events
        return [Paused(latest.text.strip(), detector.elapsed_ms, latest.language)]

    def _turn_complete(self, latest: _Hypothesis) -> bool:
        """The end-of-turn model's verdict at a pause; "not done" may lengthen the timeout."""
        judge = self._turn_end
        language = latest.language or self._language or ""
        if judge is None or not judge.supports(language):
            return False
        audio = pcm16_to_float(self._utterance_pcm(self._detector.segment_pcm()))
        score = judge.probability(audio, latest.text, language)
        self.turn_end_scores.append(score)
        if score >= self._turn_end_threshold:
            return True
        self._held = True
        if self._turn_end_wait_ms is not None:  # (never shorter than the session's own silence)
            self._detector.set_silence_ms(max(self._turn_end_wait_ms, self._silence_ms))
        return False

    def _continue_or_drop_carry(self, onset_ms: int) -> None:
        """Speech soon after an early end continues that utterance (the model was wrong)."""
        carry = self._carry
        self._held = False
        if carry is not None and onset_ms - carry.end_ms <= CONTINUE_WINDOW_MS:
            self.continued += 1
        else:
            self._carry = None

    def _utterance_pcm(self, segment: bytes) -> bytes:
        return self._carry.pcm + segment if self._carry else segment

    def _transcribe_segment(self) -> _Hypothesis:
        audio = self._utterance_pcm(self._detector.segment_pcm())
        result = self._decode(audio)
        self._latest = _Hypothesis(result.text, result.language, result.confidence,
                                   self._detector.elapsed_ms, len(audio))
        return self._latest

    def _commit_prefix(self, paused: _Hypothesis) -> None:
        """The speaker went on after a pause: what was said before it is settled (the cut is
        in silence, so no word is split), and the next decodes start after it."""
        if self._tail_decode and paused.upto - self._prefix_bytes >= COMMIT_MIN_BYTES:
            self._prefix_text, self._prefix_bytes = paused.text.strip(), paused.upto

    def _force_commit(self) -> None:
        """Bound the uncommitted tail while the speaker talks on without pausing."""
        if not self._tail_decode or self._paused is not None:
            return
        audio = self._utterance_pcm(self._detector.segment_pcm())
        start = self._prefix_bytes
        if len(audio) - start < FORCE_COMMIT_BYTES:
            return
        cut = _quietest_frame(audio, start + COMMIT_MIN_BYTES, len(audio) - FORCE_KEEP_BYTES)
        head = self._engine.transcribe(pcm16_to_float(audio[start:cut]), self._language,
                                       prompt=self._prefix_text)  # type: ignore[call-arg]
        self._prefix_text = f"{self._prefix_text} {head.text.strip()}".strip()
        self._prefix_bytes = cut

    def _drop_prefix(self) -> None:
        self._prefix_text, self._prefix_bytes = "", 0

    def _decode(self, pcm: bytes) -> Transcription:
        """The utterance's transcription: only its tail after a committed prefix, if any."""
        if not self._prefix_bytes:
            return self._engine.transcribe(pcm16_to_float(pcm), self._language)
        prefix = self._prefix_text
        tail = self._engine.transcribe(pcm16_to_float(pcm[self._prefix_bytes:]), self._language,
                                       prompt=prefix)  # type: ignore[call-arg]
        text = f"{prefix} {tail.text.strip()}".strip()
        return Transcription(text, tail.confidence, tail.language)

    def end_turn(self) -> list[AsrEvent]:
        """The client ended the turn: finalise what is buffered, even if the VAD never opened."""
        ended = self._detector.close()
        events = self._finish(ended) if ended is not None else self._finish_quiet()
        self._detector.clear()  # a second end_turn must not transcribe the same audio again
        self._agreement.reset()
        return events

    def reset(self) -> None:
        """Drop buffered audio and partial state (barge-in, cancel); stream time goes on."""
        self._detector.reset()
        self._agreement.reset()
        self._latest = self._paused = None
        self._carry = None

    def _partial_starved(self) -> bool:
        """No partial tried for long, in stream time (at least 3 of the current gaps, so a
        slow engine's adaptive pace is kept)."""
        since = self._detector.elapsed_ms - self._last_attempt_ms
        return since >= max(STARVED_PARTIAL_MS, 3 * self._partial_gap_ms)

    def _maybe_partial(self) -> list[AsrEvent]:
        onset = self._detector.onset_ms
        now = self._detector.elapsed_ms
        # Length is judged on voiced audio, so a short word is not "long" just because its
        # hangover is running; cadence runs on stream time, so partials go on through the
        # hangover and LocalAgreement can catch up with the whole utterance before the final.
        if onset is None or self._detector.voiced_ms < MIN_PARTIAL_MS:
            return []
        if now - self._last_attempt_ms < self._partial_gap_ms:
            return []
        self._last_attempt_ms = now
        started = time.perf_counter()
        result = self._transcribe_segment()
        cost_ms = (time.perf_counter() - started) * 1000
        open_end = self._detector.silence_ms < WORD_END_SILENCE_MS
        text = self._agreement.update(result.text, open_end=open_end)
        if text is None:
            return []
        if self._partial_budget > 0:  # (once words show: the first come at the interval's pace)
            self._partial_gap_ms = max(self._partial_interval_ms, round(cost_ms / self._partial_budget))
        return [Transcript(text, False, onset, now, result.confidence, result.language)]

    def _finish(self, ended: SpeechEnd) -> list[AsrEvent]:
        paused, self._paused, self._latest = self._paused, None, None
        carry, self._carry = self._carry, None
        start_ms = carry.start_ms if carry else ended.start_ms
        events: list[AsrEvent]
        if paused is not None and ended.reason in ("silence", "closed"):
            # Nothing was said since the pause: its transcription is the final, at no cost.
            text = self._agreement.settle(paused.text.strip())
            events = [Transcript(text, True, start_ms, ended.at_ms, paused.confidence,
                                 paused.language)]
        else:
            events = self._final(self._joined(carry, ended.pcm), start_ms, ended.at_ms)
        self._drop_prefix()
        self._agreement.reset()
        if self._held and ended.reason == "silence" and events:
            # The timer ended a turn the model called unfinished: more speech soon continues it.
            self._carry = _Carry(self._joined(carry, ended.pcm), start_ms, ended.at_ms)
        self._held = False
        return events

    @staticmethod
    def _joined(carry: _Carry | None, pcm: bytes) -> bytes:
        return carry.pcm + pcm if carry else pcm

    def _finish_quiet(self) -> list[AsrEvent]:
        self._drop_prefix()  # this audio is not the segment a prefix was cut from
        start_ms, pcm = self._detector.pending_pcm()
        span = _loud_span(pcm)
        if span is None:
            return []
        first = max(0, span[0] - QUIET_PREROLL_MS // FRAME_MS)
        last = span[1] + 1 + QUIET_TAIL_MS // FRAME_MS
        audio = pcm[first * FRAME_BYTES : last * FRAME_BYTES]
        return self._final(
            audio, start_ms + span[0] * FRAME_MS, start_ms + (span[1] + 1) * FRAME_MS
        )

    def _final(self, pcm: bytes, start_ms: int, end_ms: int) -> list[AsrEvent]:
        result = self._decode(pcm)
        text = self._agreement.settle(result.text.strip())
        if not text:
            return []
        return [Transcript(text, True, start_ms, end_ms, result.confidence, result.language)]


def stream_turn(engine: ASR, frames: Iterable[bytes], language: str | None = None) -> Iterator[AsrEvent]:
    """One streaming turn over `frames` with the default turn settings, closed when they end:
    streaming recognition for any batch engine."""
    session = AsrSession(engine, language=language)
    for frame in frames:
        yield from session.feed(frame)
    yield from session.end_turn()
