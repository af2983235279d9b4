"""Human handoff: a session's state while a person takes over, and the operators' queue.

A handoff starts from a trigger (orchestrator/triggers.py) on a final user turn, from the
client's `{"type":"handoff"}` or from `POST /api/v1/handoff` (both a HandoffAsk frame). Then the
assistant says the pack's handover phrase and generates no more replies: the caller's words go
to the operator who accepted (OperatorRequest "accept"), the operator's text is spoken to the
caller as an assistant turn would be (same TTS, voice and language), and "release" hands the
session back, with the operator's turns in its history. With no operator in
`handoff_timeout_s`, the caller is told so and the assistant goes on (or the session ends).

Each change is written to the store (orchestrator/handoff_store.py) before anyone is told, so an
orchestrator that restarts carries the open handoffs on: when their caller comes back the
session is in handoff again, and an operator connection that says hello again gets its accepted
handoffs back. All state lives on the orchestrator's one event loop: no locks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from common.frames import (
    ChatMessage,
    ErrorEvent,
    Frame,
    HandoffAsk,
    HandoffEvent,
    HandoffInfo,
    HandoffTrigger,
    OperatorEvent,
    OperatorRequest,
    TokenChunk,
    TranscriptChunk,
    WorkerError,
)
from common.languages import handoff as handoff_data
from common.languages import registry as languages
from common.metrics import HANDOFF_TRIGGERS, HANDOFFS
from common.settings import Settings
from orchestrator.handoff_judge import Judge, ToWorker
from orchestrator.handoff_store import HandoffRecord, HandoffStore
from orchestrator.session import Session, Turn
from orchestrator.store import ConversationStore, StoreError, TurnRecord
from orchestrator.triggers import Signals, Triggers
from orchestrator.turns import Turns

log = logging.getLogger(__name__)

ToClient = Callable[[Session, Frame], Awaitable[None]]
SendGateway = Callable[[str, Frame], object]
EndSession = Callable[[Session, str], Awaitable[None]]
END_WAIT_S = 30.0  # timeout action "end": the farewell's playback is awaited at most this long
RESTORED_GRACE = 10  # handoff timeouts a restored handoff waits for its caller to come back


@dataclass
class Handoff:
    record: HandoffRecord
    pending: list[str] = field(default_factory=list)  # the caller's words since the operator spoke
    deadline: float = math.inf  # monotonic: no operator by then -> timeout (while the caller is here)
    restored_at: float | None = None  # monotonic: read back after a restart, its caller not yet back


@dataclass
class Operator:
    gateway_id: str
    principal: str


class Handoffs:
    def __init__(self, settings: Settings, store: ConversationStore, sessions: dict[str, Session],
                 turns: Turns, to_client: ToClient, send: SendGateway, end_session: EndSession,
                 to_worker: ToWorker | None = None) -> None:
        self.settings = settings
        self.store = store
        self.db = HandoffStore(store)
        self.sessions = sessions
        self.turns = turns
        self.to_client = to_client
        self.send = send
        self.end_session = end_session
        self.triggers = Triggers(settings)
        self.judge = Judge(settings, to_worker) if to_worker is not None else None  # the LLM tier
        self.active: dict[str, Handoff] = {}  # session id -> its handoff, until it ends
        self.signals: dict[str, Signals] = {}
        self.operators: dict[str, Operator] = {}  # operator connection id -> where it is
        self._tasks: set[asyncio.Task[None]] = set()

    def judging(self, request_id: str) -> bool:
        """A result for the LLM tier (not for a turn)."""
        return self.judge is not None and self.judge.owns(request_id)

    def holds(self, session_id: str) -> bool:
        """True while the session is handed to a person: the assistant generates nothing."""
        return session_id in self.active

    # --- the caller's side ---------------------------------------------------------------------

    async def on_user_turn(self, session: Session, text: str, confidence: float | None) -> bool:
        """A final user turn: True when the handoff takes it (no assistant reply follows)."""
        handoff = self.active.get(session.session_id)
        if handoff is not None:
            await self._caller_said(session, handoff, text, confidence)
            return True
        if not self.settings.handoff_enabled:
            return False
        signals = self.signals.setdefault(session.session_id, Signals())
        firing = self.triggers.evaluate(signals, session.language, text, confidence, session.fallbacks)
        if firing is None:
            if self.judge is not None and self.judge.unsure(signals.score):
                await self.judge.ask(session, text, signals.score)  # beside the reply, not before it
            return False
        trigger = HandoffTrigger(firing.kind, firing.evidence, round(firing.score, 3), firing.at)
        await self.start(session, firing.kind, trigger, user_text=text)
        return True

    async def start(self, session: Session, reason: str, trigger: HandoffTrigger,
                    user_text: str = "") -> Handoff:
        """Enter the handoff state (again: the handoff already under way)."""
        handoff = self.active.get(session.session_id)
        if handoff is not None:
            return handoff
        signals = self.signals.get(session.session_id) or Signals()
        record = HandoffRecord(session.session_id, await self._next_seq(session.session_id),
                               reason=reason, language=session.language, triggers=[trigger],
                               confidences=[round(c, 3) for c in signals.confidences],
                               requested=time.time())
        handoff = self.active[session.session_id] = Handoff(record, deadline=self._deadline())
        HANDOFFS.labels("requested").inc()
        log.info("handoff requested", extra={"session_id": session.session_id, "reason": reason})
        await self._save(record)
        await self.to_client(session, HandoffEvent(event="handoff.started", reason=reason))
        await self._speak(session, languages.get(session.language).fallback("handover"), user_text)
        self._broadcast("handoff.requested", self.info(handoff))
        return handoff

    async def on_judgment(self, result: TokenChunk | WorkerError) -> None:
        """The LLM tier's answer: "yes" starts the handoff (the reply under way is cut)."""
        judged = self.judge.on_result(result) if self.judge is not None else None
        session = self.sessions.get(judged.session_id) if judged is not None else None
        if judged is None or session is None or session.session_id in self.active:
            return
        HANDOFF_TRIGGERS.labels("llm").inc()
        log.info("handoff trigger fired", extra={"kind": "llm", "score": round(judged.score, 3)})
        trigger = HandoffTrigger("llm", judged.text, round(judged.score, 3), time.time())
        await self.start(session, "llm", trigger)

    def on_partial(self, session: Session, chunk: TranscriptChunk) -> None:
        """The caller's words as they speak (asr.partial), to the operator holding them."""
        handoff = self.active.get(session.session_id)
        if handoff is not None and handoff.record.state == "accepted" and chunk.text:
            self._to_operator(handoff.record.operator_conn, OperatorEvent(
                event="transcript.partial", target=session.session_id, text=chunk.text,
                confidence=round(chunk.confidence, 3)))

    async def _caller_said(self, session: Session, handoff: Handoff, text: str,
                           confidence: float | None) -> None:
        handoff.pending.append(text)
        signals = self.signals.setdefault(session.session_id, Signals())
        signals.confidences.append(1.0 if confidence is None else confidence)
        operator = self.operators.get(handoff.record.operator_conn)
        if handoff.record.state == "accepted" and operator is not None:
            self._to_operator(handoff.record.operator_conn, OperatorEvent(
                event="transcript", target=session.session_id, text=text,
                confidence=round(1.0 if confidence is None else confidence, 3)))

    async def _speak(self, session: Session, text: str, user_text: str) -> int:
        """Say `text` to the caller as an assistant turn (TTS in the session's voice and
        language, history, store), answering `user_text` if any; its turn id."""
        await self.turns.cancel(session, tell_client=True)
        session.turns += 1
        turn = Turn(session.turns, user_text, request_id="")  # no LLM request: one "token"
        session.turn = turn
        await self.turns.on_token(session, TokenChunk(turn_id=turn.turn_id, token=text))
        return turn.turn_id

    async def on_session_start(self, session: Session) -> None:
        """A session (re)starts: one in handoff (a restart, a reconnect) is in it again."""
        handoff = self.active.get(session.session_id)
        if handoff is None:
            return
        record = handoff.record
        handoff.restored_at = None
        if record.state == "accepted" and record.operator_conn not in self.operators:
            record.state, record.operator, record.operator_conn = "requested", "", ""
            await self._save(record)
        handoff.deadline = self._deadline() if record.state == "requested" else math.inf
        await self.to_client(session, HandoffEvent(event="handoff.started", reason=record.reason))
        if record.state == "requested":
            self._broadcast("handoff.requested", self.info(handoff))
        else:  # its operator is still there (it said hello again after a restart)
            await self.to_client(session, HandoffEvent(event="handoff.accepted"))
            self._to_operator(record.operator_conn, OperatorEvent(
                event="handoff.accepted", target=session.session_id, handoffs=[self.info(handoff)]))

    async def on_session_end(self, session: Session) -> None:
        self.signals.pop(session.session_id, None)
        handoff = self.active.get(session.session_id)
        if handoff is not None:
            await self._end(handoff, "caller_left")

    # --- requests from gateways ------------------------------------------------------------------

    async def ask(self, message: HandoffAsk, gateway_id: str) -> None:
        """The client's `{"type":"handoff"}` (no request id) or `POST /api/v1/handoff`."""
        session = self.sessions.get(message.session_id)
        mine = session is not None and (message.admin or message.principal == session.principal)
        error = None if mine else ErrorEvent(code="session_not_found",
                                             message="no live session with that id is yours")
        if error is None and not self.settings.handoff_enabled:
            error = ErrorEvent(code="handoff_disabled", message="handoff is turned off on this server")
        if error is not None or session is None:
            if message.request_id and error is not None:
                error.session_id, error.request_id = message.session_id, message.request_id
                self.send(gateway_id, error)
            elif session is not None and error is not None and mine:  # the client's own ask
                await self.to_client(session, error)
            return
        kind = "api" if message.request_id else "client"
        trigger = HandoffTrigger(kind, message.reason[:200], 1.0, time.time())
        handoff = await self.start(session, kind, trigger)
        if message.request_id:  # (the answer's reason carries the handoff's state)
            self.send(gateway_id, HandoffEvent(session_id=session.session_id, request_id=message.request_id,
                                               event="handoff.started", reason=handoff.record.state))

    async def on_operator(self, message: OperatorRequest, gateway_id: str) -> None:
        op_id = message.operator_id
        known = self.operators.get(op_id)
        if not op_id or (known is not None and known.gateway_id != gateway_id):
            return  # another gateway's operator: not this one's to act for
        if message.action == "bye":
            await self._operator_gone(op_id)
            return
        self.operators[op_id] = Operator(gateway_id, message.principal)
        match message.action:
            case "hello":
                self._hello(op_id)
            case "accept":
                await self._accept(op_id, message.session_id)
            case "say":
                await self._say(op_id, message.session_id, message.text)
            case "release":
                await self._release(op_id, message.session_id)

    async def drop_gateway(self, gateway_id: str) -> None:
        for op_id in [o for o, op in self.operators.items() if op.gateway_id == gateway_id]:
            await self._operator_gone(op_id)

    # --- operators -------------------------------------------------------------------------------

    def _hello(self, op_id: str) -> None:
        """The queue (handoffs waiting, callers connected), then this operator's own handoffs
        (after an orchestrator restart it gets them back)."""
        waiting = [self.info(h) for h in self.active.values()
                   if h.record.state == "requested" and h.record.session_id in self.sessions]
        self._to_operator(op_id, OperatorEvent(event="handoff.queue", handoffs=waiting))
        for handoff in self.active.values():
            if handoff.record.operator_conn == op_id and handoff.record.state == "accepted":
                self._to_operator(op_id, OperatorEvent(event="handoff.accepted",
                                                       target=handoff.record.session_id,
                                                       handoffs=[self.info(handoff)]))

    def _mine(self, op_id: str, session_id: str) -> tuple[Handoff | None, Session | None]:
        """The handoff `op_id` accepted for `session_id` and its live session; (None, None) and
        an error to the operator otherwise."""
        handoff = self.active.get(session_id)
        session = self.sessions.get(session_id)
        if handoff is None or session is None or handoff.record.operator_conn != op_id:
            self._error(op_id, session_id, "not_yours", "no handoff of that session is accepted by you")
            return None, None
        return handoff, session

    async def _accept(self, op_id: str, session_id: str) -> None:
        handoff = self.active.get(session_id)
        session = self.sessions.get(session_id)
        if handoff is None or session is None:
            self._error(op_id, session_id, "no_such_handoff", "no caller is waiting with that session id")
            return
        if handoff.record.state != "requested":
            self._error(op_id, session_id, "already_taken", "another operator has this caller")
            return
        record = handoff.record
        record.state, record.accepted, handoff.deadline = "accepted", time.time(), math.inf
        record.operator, record.operator_conn = self.operators[op_id].principal, op_id
        HANDOFFS.labels("accepted").inc()
        await self._save(record)
        log.info("handoff accepted", extra={"session_id": session_id, "operator": record.operator})
        self._to_operator(op_id, OperatorEvent(event="handoff.accepted", target=session_id,
                                               handoffs=[self.info(handoff)]))
        for other in self.operators:
            if other != op_id:
                self._to_operator(other, OperatorEvent(event="handoff.taken", target=session_id))
        await self.to_client(session, HandoffEvent(event="handoff.accepted"))

    async def _say(self, op_id: str, session_id: str, text: str) -> None:
        handoff, session = self._mine(op_id, session_id)
        if handoff is None or session is None or not text.strip():
            return
        heard, handoff.pending = " ".join(handoff.pending), []
        turn_id = await self._speak(session, text.strip(), heard)
        handoff.record.turns.append(turn_id)
        await self._save(handoff.record)

    async def _release(self, op_id: str, session_id: str) -> None:
        handoff, session = self._mine(op_id, session_id)
        if handoff is None or session is None:
            return
        await self._keep_pending(session, handoff)
        await self._end(handoff, "released")
        await self.to_client(session, HandoffEvent(event="handoff.ended", reason="released"))

    async def _operator_gone(self, op_id: str) -> None:
        """An operator left (or its gateway did): its callers go back to the queue."""
        self.operators.pop(op_id, None)
        for handoff in list(self.active.values()):
            record = handoff.record
            if record.operator_conn == op_id:
                record.state, record.operator, record.operator_conn = "requested", "", ""
                handoff.deadline = self._deadline()
                await self._save(record)
                self._broadcast("handoff.requested", self.info(handoff))

    # --- ending ------------------------------------------------------------------------------------

    async def _end(self, handoff: Handoff, outcome: str) -> None:
        record = handoff.record
        was_accepted, op_id = record.state == "accepted", record.operator_conn
        record.state, record.ended, record.outcome = "ended", time.time(), outcome
        self.active.pop(record.session_id, None)
        HANDOFFS.labels(outcome).inc()
        log.info("handoff ended", extra={"session_id": record.session_id, "outcome": outcome})
        await self._save(record)
        ended = OperatorEvent(event="handoff.ended", target=record.session_id, text=outcome)
        if was_accepted:
            self._to_operator(op_id, ended)
        else:
            for other in self.operators:  # withdrawn from everyone's queue
                self._to_operator(other, ended)

    async def _keep_pending(self, session: Session, handoff: Handoff) -> None:
        """The caller's last words no operator answered: into the history and the store."""
        if not handoff.pending:
            return
        text, handoff.pending = " ".join(handoff.pending), []
        session.turns += 1
        session.remember(text, "")
        try:
            await self.store.record_turn(TurnRecord(session.session_id, session.turns, text, "",
                                                    language=session.language))
        except StoreError:
            log.exception("conversation store: handoff turn not written",
                          extra={"session_id": session.session_id})

    async def expire(self) -> None:
        """Handoffs no operator accepted in time (their caller connected): the caller is told in
        their language; the assistant goes on, or the session ends (handoff_timeout_action)."""
        now = time.monotonic()
        await self._forget_gone(now)
        if self.judge is not None:
            self.judge.expire(now)
        due = [h for h in self.active.values() if h.record.state == "requested" and h.deadline <= now]
        for handoff in due:
            session = self.sessions.get(handoff.record.session_id)
            if session is None:
                continue
            log.warning("handoff timed out: no operator", extra={"session_id": session.session_id})
            await self._end(handoff, "timeout")
            await self.to_client(session, HandoffEvent(event="handoff.ended", reason="timeout"))
            end = self.settings.handoff_timeout_action == "end"
            phrase = handoff_data.get(session.language).phrases["timeout_end" if end else "timeout"]
            heard, handoff.pending = " ".join(handoff.pending), []
            turn_id = await self._speak(session, phrase, heard)
            if end:
                self._spawn(self._end_after(session, turn_id))

    async def _forget_gone(self, now: float) -> None:
        """Handoffs read back after a restart whose caller did not come back within
        RESTORED_GRACE timeouts: the caller is gone."""
        grace = RESTORED_GRACE * self.settings.handoff_timeout_s
        for handoff in list(self.active.values()):
            if handoff.restored_at is not None and now - handoff.restored_at > grace:
                await self._end(handoff, "caller_left")

    async def _end_after(self, session: Session, turn_id: int) -> None:
        """End the session once its farewell has been played (or END_WAIT_S at most)."""
        deadline = time.monotonic() + END_WAIT_S
        while time.monotonic() < deadline and self.sessions.get(session.session_id) is session:
            turn = session.turn
            if turn is None or turn.turn_id != turn_id or turn.closed:
                break
            await asyncio.sleep(0.1)
        if self.sessions.get(session.session_id) is session:
            await self.to_client(session, ErrorEvent(code="handoff_timeout", fatal=True,
                                                     message="no operator was free; the session ended"))
            await self.end_session(session, "handoff_timeout")

    # --- the store, restarts, and what operators and REST see ------------------------------------

    async def restore(self) -> None:
        """At start: the handoffs a previous run left open are open again (their callers come
        back to them; the timeout runs again from their return)."""
        try:
            records = await self.db.open_handoffs()
        except StoreError:
            log.exception("conversation store: open handoffs not restored")
            return
        for record in records:
            self.active[record.session_id] = Handoff(record, restored_at=time.monotonic())
        if records:
            log.info("open handoffs restored", extra={"count": len(records)})

    async def _save(self, record: HandoffRecord) -> None:
        try:
            await self.db.save(record)
        except StoreError:
            log.exception("conversation store: handoff not written", extra={"session_id": record.session_id})

    async def _next_seq(self, session_id: str) -> int:
        try:
            return len(await self.db.of_session(session_id)) + 1
        except StoreError:
            return 1

    def info(self, handoff: Handoff) -> HandoffInfo:
        """The handoff with its whole context, for an operator."""
        record = handoff.record
        session = self.sessions.get(record.session_id)
        history = list(session.history) if session is not None else []
        history += [ChatMessage("user", text) for text in handoff.pending]
        timings = dict(session.turn.timings) if session is not None and session.turn is not None else {}
        return HandoffInfo(record.session_id, record.state, record.reason, record.language,
                           record.requested, record.accepted, record.ended, record.outcome,
                           record.operator, list(record.triggers), history, list(record.confidences),
                           timings, list(record.turns), session is not None)

    def _deadline(self) -> float:
        return time.monotonic() + self.settings.handoff_timeout_s

    def _to_operator(self, op_id: str, event: OperatorEvent) -> None:
        operator = self.operators.get(op_id)
        if operator is not None:
            event.session_id = op_id
            self.send(operator.gateway_id, event)

    def _broadcast(self, event: str, info: HandoffInfo) -> None:
        for op_id in list(self.operators):
            self._to_operator(op_id, OperatorEvent(event=event, target=info.session_id, handoffs=[info]))

    def _error(self, op_id: str, session_id: str, code: str, message: str) -> None:
        self._to_operator(op_id, OperatorEvent(event="error", target=session_id, code=code, text=message))

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
