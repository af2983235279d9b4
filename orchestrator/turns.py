"""The life of a reply turn: generate, cut into phrases, synthesize, forward, cancel, remember.

Early reply: when the speaker pauses, the ASR sends a hypothesis of the whole utterance and a
*speculative* turn starts at once. Its tokens and audio are held back from the client. If the
final transcript says the same, the turn is committed and the held frames flow out (the LLM and
TTS time was hidden behind the end-of-turn silence); if the speaker went on, or said something
else, the speculative turn is cancelled quietly: no client frame, no history.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

from common.frames import (
    AudioChunk,
    Cancel,
    ErrorEvent,
    Frame,
    GenerateRequest,
    PlaybackMark,
    SynthesizeRequest,
    TokenChunk,
    TranscriptChunk,
    TurnEvent,
    TurnHypothesis,
    WorkerKind,
)
from common.languages import registry as languages
from common.logs import content
from common.metrics import LLM_TTFW_MS, TURNS
from common.settings import Settings
from orchestrator.overload import ERROR_CODE, ERROR_MESSAGE, Ladder, busy_line
from orchestrator.session import TTS_WINDOW, Phrase, Session, Turn, TurnState
from orchestrator.store import ConversationStore, TurnModel, TurnRecord

log = logging.getLogger(__name__)

ToWorker = Callable[[Session, WorkerKind, Frame], Awaitable[bool]]
ToClient = Callable[[Session, Frame], Awaitable[None]]
Publish = Callable[[Frame], Awaitable[None]]
Models = Callable[[Session], list[TurnModel]]


def same_words(a: str, b: str) -> bool:
    def words(text: str) -> list[str]:
        return re.sub(r"[^\w\s']", " ", text.lower()).split()

    return words(a) == words(b)


class Turns:
    def __init__(
        self, settings: Settings, to_worker: ToWorker, to_client: ToClient, publish: Publish,
        *, store: ConversationStore | None = None, models: Models | None = None,
        overload: Ladder | None = None,
    ) -> None:
        self.settings = settings
        self.to_worker = to_worker
        self.to_client = to_client
        self.publish = publish
        self.store = store
        self.models = models
        self.overload = overload  # (orchestrator/overload.py: shorter replies, then refusals)
        self._writes: set[asyncio.Task[None]] = set()  # interruptions being written

    # --- what the user said --------------------------------------------------------------------

    async def on_final(self, session: Session, chunk: TranscriptChunk) -> None:
        turn = session.turn
        if turn is not None and turn.speculative and not turn.cancelled:
            if same_words(turn.user_text, chunk.text):
                turn.confidence = chunk.confidence
                await self._commit(session, turn, chunk.text)
                return
            await self.cancel(session, tell_client=False)
        await self.start(session, chunk.text, confidence=chunk.confidence)

    async def on_hypothesis(self, session: Session, hypothesis: TurnHypothesis) -> None:
        if not self.settings.early_reply or not hypothesis.text.strip():
            return
        if self.overload is not None and self.overload.refusing:
            return  # no speculation while new turns are refused: the final gets the busy line
        turn = session.turn
        if turn is not None and turn.speculative and not turn.cancelled:
            if same_words(turn.user_text, hypothesis.text):
                return  # already answering exactly this
            await self.cancel(session, tell_client=False)
        await self.start(session, hypothesis.text, speculative=True)

    async def on_speech(self, session: Session, event: str) -> None:
        """New speech: a barge-in on a reply being played, or the end of a speculation."""
        turn = session.turn
        if turn is None or turn.closed:
            return
        if turn.speculative or event == "speech_start":
            await self.cancel(session, tell_client=True)

    def on_playback(self, session: Session, mark: PlaybackMark) -> None:
        turn = session.turn
        if turn is not None and turn.turn_id == mark.turn_id and turn.stopped and mark.text:
            self._heard_after_stop(session, turn, mark.text)
            return
        if turn is None or turn.turn_id != mark.turn_id or turn.closed:
            return
        if mark.text:
            turn.played.append(mark.text)
        if mark.done:
            turn.to(TurnState.DONE)
            session.remember(turn.user_text, turn.reply_text.strip(), turn.turn_id)

    # --- starting, committing, cancelling --------------------------------------------------------

    async def start(self, session: Session, user_text: str, *, speculative: bool = False,
                    confidence: float | None = None, instructions: str = "") -> None:
        await self.cancel(session, tell_client=True)
        session.turns += 1
        turn_id = session.turns
        turn = Turn(turn_id, user_text, request_id=f"{session.session_id}:{turn_id}:llm:1",
                    speculative=speculative, confidence=confidence)
        session.turn = turn
        pack = languages.get(session.language)
        if pack.blocks_input(user_text):  # the safety filter: a polite refusal, no LLM call
            log.info("input blocked by the safety filter", extra={"session_id": session.session_id})
            TURNS.labels("refused").inc()
            turn.request_id, turn.fallback = "", "cannot_help"
            await self.on_token(session, TokenChunk(turn_id=turn_id, token=pack.fallback("cannot_help")))
            return
        budget = session.max_new_tokens
        if self.overload is not None:  # the overload ladder: a shorter reply, or none at all
            await self.overload.update()
            if self.overload.refusing:
                await self._refuse_busy(session, turn)
                return
            budget = self.overload.reply_tokens(budget)
        turn.request = GenerateRequest(
            session_id=session.session_id,
            turn_id=turn_id,
            request_id=turn.request_id,
            messages=session.prompt(self.settings.system_prompt or pack.system_prompt, user_text,
                                    instructions),  # (a client's own for this reply: OpenAI Realtime)
            max_new_tokens=budget,
            language=session.language,
        )
        log.info("turn started", extra={
            "session_id": session.session_id, "turn_id": turn_id, "history": len(session.history),
            "prompt": content(" | ".join(f"{m.role}: {m.content}" for m in turn.request.messages))})
        await self.to_worker(session, "llm", turn.request)

    async def _refuse_busy(self, session: Session, turn: Turn) -> None:
        """The overload ladder's last level: no LLM call; the client gets an `overloaded` error
        and hears the pack's busy line, and the turn is stored and remembered like any other."""
        log.warning("turn refused: overloaded",
                    extra={"session_id": session.session_id, "turn_id": turn.turn_id})
        TURNS.labels("overloaded").inc()
        assert self.overload is not None
        self.overload.refused()
        turn.request_id, turn.fallback = "", "busy"
        await self._emit(session, turn, ErrorEvent(turn_id=turn.turn_id, code=ERROR_CODE,
                                                   message=ERROR_MESSAGE))
        line = busy_line(languages.get(session.language))
        await self.on_token(session, TokenChunk(turn_id=turn.turn_id, token=line))

    async def check_timeouts(self, session: Session) -> None:
        """An LLM that stays silent too long: speak a fallback instead, and ask for shorter
        replies in this session from now on."""
        turn = session.turn
        if turn is None or not turn.active or turn.llm_done or turn.request is None:
            return
        if time.monotonic() - turn.progress_at < self.settings.llm_timeout_s:
            return
        log.warning("llm timeout: fallback reply", extra={"session_id": session.session_id})
        await self.publish(Cancel(session_id=session.session_id, turn_id=turn.turn_id,
                                  request_id=turn.request_id))
        session.max_new_tokens = max(16, session.max_new_tokens // 2)
        await self._speak_fallback(session, turn, "llm_timeout")

    async def on_llm_failed(self, session: Session, request_id: str) -> None:
        """The LLM engine failed on this turn's request (a remote server gone mid-reply, an
        engine error): the person still gets a spoken answer, the pack's "unavailable" line,
        after whatever part of the reply was already said."""
        turn = session.turn
        if turn is None or not turn.active or turn.llm_done or not request_id:
            return
        if request_id != turn.request_id:
            return  # a request this turn has already left behind (a replay, a timeout)
        log.warning("llm failed: fallback reply", extra={"session_id": session.session_id})
        fragment = turn.cutter.discard()  # half a sentence is not said; the apology follows
        if fragment and turn.reply_text.endswith(fragment):
            turn.reply_text = turn.reply_text[: -len(fragment)].rstrip()
        await self._speak_fallback(session, turn, "unavailable")

    async def _speak_fallback(self, session: Session, turn: Turn, reason: str) -> None:
        text = languages.get(session.language).fallback(reason)
        TURNS.labels(f"{reason}_fallback").inc()
        turn.fallback = reason  # (counted for the handoff trigger)
        turn.request, turn.request_id = None, ""  # late tokens of the old request are ignored
        await self.on_token(session, TokenChunk(turn_id=turn.turn_id, token=text))

    # --- replay after a worker died ----------------------------------------------------------------

    async def replay_llm(self, session: Session) -> None:
        """Ask another instance to go on from the text already sent (new id: late tokens of
        the dead instance no longer match)."""
        turn = session.turn
        if turn is None or not turn.active or turn.llm_done or turn.request is None:
            return
        turn.attempts += 1
        turn.request_id = f"{session.session_id}:{turn.turn_id}:llm:{turn.attempts}"
        turn.request.request_id = turn.request_id
        turn.request.prefix = turn.reply_text
        await self.to_worker(session, "llm", turn.request)

    async def replay_tts(self, session: Session) -> None:
        """Resend the phrases in flight; frames already forwarded are skipped when they return."""
        turn = session.turn
        if turn is None or not turn.active:
            return
        old, turn.in_flight = turn.in_flight, {}
        for phrase in old.values():
            await self._synthesize(session, turn, Phrase(phrase.text, skip=phrase.forwarded))

    async def _commit(self, session: Session, turn: Turn, final_text: str) -> None:
        turn.speculative = False
        turn.user_text = final_text
        turn.mark("committed")
        if turn.state is TurnState.FORWARDED:  # it finished while held: its tts.end is held too
            await self._store(session, turn)
            if turn.cancelled:  # interrupted while it was being written: nothing more to send
                return
        held, turn.held = turn.held, []
        log.info("early reply committed", extra={"session_id": session.session_id, "held": len(held)})
        for frame in held:
            await self.to_client(session, frame)

    async def cancel(self, session: Session, *, tell_client: bool) -> None:
        """Stop the turn in progress everywhere; history keeps only what was heard."""
        turn = session.turn
        if turn is None or turn.closed:
            return
        turn.to(TurnState.CANCELLED)
        await self.publish(Cancel(session_id=session.session_id, turn_id=turn.turn_id))
        TURNS.labels("speculation_discarded" if turn.speculative else "interrupted").inc()
        if turn.speculative:
            return  # never shown to the client: leaves no trace
        session.remember(turn.user_text, " ".join(turn.played), turn.turn_id)
        if tell_client and turn.audio_started:
            await self.to_client(session, TurnEvent(turn_id=turn.turn_id, event="tts.cancel"))
        # Written behind the handler, not awaited: a barge-in never waits on the disk, and no
        # other frame can slip in between this cancel and the turn that follows it. (The store's
        # one thread keeps the order: after any earlier write of this turn.)
        if self.store is not None:
            task = asyncio.get_running_loop().create_task(
                self._store(session, turn, heard=" ".join(turn.played)))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def stop(self, session: Session, turn_id: int) -> None:
        """The client stopped this reply (OpenAI Realtime response.cancel): its LLM and TTS
        stop now. The client may say afterwards how much of it was heard (truncate)."""
        turn = session.turn
        if turn is None or turn.turn_id != turn_id or turn.closed or turn.speculative:
            return
        turn.stopped = True
        await self.cancel(session, tell_client=False)  # (the client already knows)

    def _heard_after_stop(self, session: Session, turn: Turn, text: str) -> None:
        """A heard mark for a reply the client stopped: the history and the store keep it."""
        turn.played.append(text)
        heard = " ".join(turn.played)
        session.amend_reply(heard)
        if self.store is not None:
            task = asyncio.get_running_loop().create_task(
                self._store_after(list(self._writes), session, turn, heard))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _store_after(self, before: list[asyncio.Task[None]], session: Session, turn: Turn,
                           heard: str) -> None:
        await asyncio.gather(*before, return_exceptions=True)  # the cancel's write goes first
        await self._store(session, turn, heard=heard)

    async def flush(self) -> None:
        """Wait for the interruptions still being written (before the store closes; tests)."""
        while self._writes:
            await asyncio.gather(*list(self._writes))

    # --- what the workers produce ------------------------------------------------------------------

    @staticmethod
    def current(session: Session, frame: Frame) -> Turn | None:
        turn = session.turn
        if turn is None or turn.turn_id != frame.turn_id or not turn.active:
            return None  # a superseded or cancelled turn: its late frames go nowhere
        return turn

    async def _emit(self, session: Session, turn: Turn, frame: Frame) -> None:
        if turn.speculative:
            turn.held.append(frame)
        else:
            await self.to_client(session, frame)

    async def on_token(self, session: Session, chunk: TokenChunk) -> None:
        turn = self.current(session, chunk)
        if turn is None or chunk.request_id != turn.request_id:
            return
        if not turn.request_id:  # the fallback reply: one token, then the end
            chunk.token = f" {chunk.token}" if turn.reply_text else chunk.token
            chunk.is_final = True
        turn.progress_at = time.monotonic()
        if "first_token" not in turn.timings and chunk.token:
            LLM_TTFW_MS.observe((turn.progress_at - turn.started_at) * 1000)
        turn.mark("first_token")
        if chunk.token:
            turn.reply_text += chunk.token
            turn.token_seq += 1
            # Stored stage timings (issue 14): the last token so far, and the count, so a turn's
            # generation span and tokens/s can be read back from the conversation store.
            turn.timings["last_token"] = round((turn.progress_at - turn.started_at) * 1000, 1)
            turn.timings["tokens"] = turn.token_seq
            token = TokenChunk(turn_id=turn.turn_id, seq=turn.token_seq, token=chunk.token,
                               elapsed_ms=chunk.elapsed_ms)
            await self._emit(session, turn, token)
            for phrase in turn.cutter.feed(chunk.token):
                await self._queue_checked(session, turn, phrase)
        if chunk.is_final:
            for phrase in turn.cutter.flush():
                await self._queue_checked(session, turn, phrase)
            turn.to(TurnState.SYNTHESIZING)
            turn.request = None
        await self._pump_tts(session, turn)

    async def _queue_checked(self, session: Session, turn: Turn, phrase: str) -> None:
        """The output safety filter: a phrase the pack forbids is not spoken; the reply ends
        with the pack's polite refusal instead, and the LLM stops."""
        if turn.llm_done:
            return  # the reply was already cut short
        pack = languages.get(session.language)
        if not pack.blocks_output(phrase):
            turn.accepted.append(phrase)
            turn.queue_phrase(phrase)
            return
        log.warning("output blocked by the safety filter", extra={"session_id": session.session_id})
        TURNS.labels("output_blocked").inc()
        turn.fallback = "cannot_help"
        if turn.request_id:
            await self.publish(Cancel(session_id=session.session_id, turn_id=turn.turn_id,
                                      request_id=turn.request_id))
        refusal = pack.fallback("cannot_help")
        turn.queue_phrase(refusal)
        turn.reply_text = " ".join([*turn.accepted, refusal])  # what is said, and remembered
        turn.to(TurnState.SYNTHESIZING)
        turn.request, turn.request_id = None, ""

    async def _pump_tts(self, session: Session, turn: Turn) -> None:
        """Hand queued phrases to TTS, keeping at most TTS_WINDOW there at once."""
        while turn.pending and len(turn.in_flight) < TTS_WINDOW:
            await self._synthesize(session, turn, Phrase(turn.pending.popleft()))
        if turn.complete:
            await self._finish(session, turn)

    async def _synthesize(self, session: Session, turn: Turn, phrase: Phrase) -> None:
        turn.phrases += 1
        request_id = f"{session.session_id}:{turn.turn_id}:tts:{turn.phrases}"
        turn.in_flight[request_id] = phrase
        request = SynthesizeRequest(
            session_id=session.session_id,
            turn_id=turn.turn_id,
            request_id=request_id,
            text=phrase.text,
            language=session.language,
            sample_rate=self.settings.audio_out_sample_rate,
            speed=session.speed,
        )
        await self.to_worker(session, "tts", request)

    async def on_audio(self, session: Session, chunk: AudioChunk) -> None:
        turn = self.current(session, chunk)
        phrase = turn.in_flight.get(chunk.request_id) if turn is not None else None
        if turn is None or phrase is None:
            return
        if chunk.payload:
            phrase.forwarded += 1
            if phrase.forwarded <= phrase.skip:
                return  # forwarded before the replay: never twice
        if not turn.audio_started:
            turn.mark("first_audio")
            turn.audio_started = True
            await self._emit(session, turn, TurnEvent(turn_id=turn.turn_id, event="tts.start"))
        request_id = chunk.request_id
        if chunk.payload or chunk.is_final:  # the final marker tells the gateway a phrase ended
            turn.audio_seq += 1
            chunk.seq, chunk.request_id = turn.audio_seq, ""
            await self._emit(session, turn, chunk)
        if chunk.is_final:
            turn.in_flight.pop(request_id, None)
            await self._pump_tts(session, turn)

    async def _finish(self, session: Session, turn: Turn) -> None:
        """All audio is forwarded; the history is written when the gateway says it was sent."""
        turn.to(TurnState.FORWARDED)
        TURNS.labels("completed").inc()
        session.fallbacks = session.fallbacks + 1 if turn.fallback else 0  # (a handoff signal)
        turn.mark("tts_end")
        if not turn.speculative:  # (a speculative one is stored when committed)
            await self._store(session, turn)  # before tts.end: a committed turn is never lost
            if turn.cancelled:  # interrupted while it was being written: no tts.end after the cancel
                return
        end = TurnEvent(turn_id=turn.turn_id, event="tts.end", text=turn.reply_text.strip())
        await self._emit(session, turn, end)
        log.info("turn done", extra={"session_id": session.session_id, "turn_id": turn.turn_id,
                                     "early": "committed" in turn.timings, **turn.timings})

    async def _store(self, session: Session, turn: Turn, *, heard: str | None = None) -> None:
        """Write the turn to the conversation store (an interrupted one: what was heard). A
        store failure is logged and the conversation goes on (its history stays in memory)."""
        if self.store is None:
            return
        try:
            if turn.stored and heard is not None:
                await self.store.set_heard(session.session_id, turn.turn_id, heard)
                return
            await self.store.record_turn(TurnRecord(
                session.session_id, turn.turn_id, turn.user_text, turn.reply_text.strip(),
                heard=heard, language=session.language, confidence=turn.confidence,
                timings=dict(turn.timings), models=self.models(session) if self.models else []))
            turn.stored = True
        except Exception:
            log.exception("conversation store: turn not written",
                          extra={"session_id": session.session_id, "turn_id": turn.turn_id})
