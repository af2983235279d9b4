"""The orchestrator: sessions, turns and the routing of frames between gateways and workers.

One reader task per socket (ingress from gateways, results from workers, the watchdog's own
socket) dispatches each frame with `match`; all state lives on this one event loop, so
handlers need no locks. Readers never wait on a peer: every send is queued on that peer's
Sender (common/transport.py).

Trust: the plane admits only the service user (ipc) or known keys by role (CURVE). On top of
that, a gateway acts only on its own sessions (under CURVE its key names it), answers go to
the gateway's configured endpoint (never to an address a frame names), a worker announces
only an endpoint it is configured for, and only the watchdog reports a worker's death.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid

from common.frames import (
    AdminRequest,
    AudioChunk,
    AudioIn,
    CancelTurn,
    ChatJob,
    ClearAudio,
    EndTurn,
    ErrorEvent,
    Frame,
    GatewayHeartbeat,
    HandoffAsk,
    Heartbeat,
    HistoryAdd,
    HistoryDelete,
    HistoryRequest,
    IngressMessage,
    JobCancel,
    Leaving,
    OperatorRequest,
    Ping,
    PlaybackMark,
    Ready,
    Respond,
    ResultMessage,
    SessionConfig,
    SessionDelete,
    SessionEnd,
    SessionList,
    SessionStart,
    SpeakJob,
    StackStatus,
    TextIn,
    TokenChunk,
    TranscribeJob,
    TranscriptChunk,
    Transcription,
    TurnHypothesis,
    VadEvent,
    WarmupDone,
    WorkerError,
    WorkerExited,
    WorkerKind,
    ingress_decoder,
    is_worker_kind,
    result_decoder,
    watchdog_decoder,
)
from common.logs import content
from common.metrics import (
    DROPPED_FRAMES,
    OVERLOAD_ACTIONS,
    RESTART_BUDGET_EXHAUSTED,
    SESSIONS_ENDED,
    WORKER_RESTARTS,
    declare_series,
)
from common.plane_auth import gateway_identity
from common.settings import Settings
from common.transport import Plane, Sender
from orchestrator.admin import Admin
from orchestrator.client_turns import ClientTurns
from orchestrator.gateways import Gateways
from orchestrator.handoff import Handoffs
from orchestrator.idle import IDLE_REASON, idle_message, idle_sessions, metric_reason
from orchestrator.jobs import Jobs
from orchestrator.overload import Ladder, llm_load
from orchestrator.recovery import Recovery
from orchestrator.registry import Instance, WorkerRegistry
from orchestrator.session import Session
from orchestrator.store import StoreError, TurnModel, open_store
from orchestrator.store_api import Conversations
from orchestrator.turns import Turns

log = logging.getLogger(__name__)

SessionFrame = (AudioIn | EndTurn | TextIn | SessionEnd | PlaybackMark | SessionConfig | CancelTurn
                | HistoryAdd | HistoryDelete | Respond | ClearAudio)
GATEWAY_PREFIX = "gateway-"


class Orchestrator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions: dict[str, Session] = {}
        self.incarnation = uuid.uuid4().hex
        self._max_audio_bytes = int(settings.max_audio_seconds * 32000) + 64000
        self._plane: Plane | None = None
        self._control: Sender | None = None
        liveness_s = settings.heartbeat_interval_s * settings.heartbeat_liveness
        self.registry = WorkerRegistry(liveness_s, self._connect_worker)
        self.gateways = Gateways(settings, self._connect_gateway, self._disconnect)
        self.store = open_store(settings)  # opened by serve() (or by its first use)
        self.conversations = Conversations(settings, self.store, self.sessions, self.gateways.send)
        self.overload = Ladder(settings, self._llm_load, on_partials=self._partials)  # (issue 15)
        self.turns = Turns(settings, self._to_worker, self._to_client, self._publish,
                           store=self.store, models=self._turn_models, overload=self.overload)
        self.recovery = Recovery(self.sessions, self.registry, self.turns, self._to_worker,
                                 self._to_client, settings.request_timeout_s)
        self.jobs = Jobs(settings, self.registry, self._to_gateway, self._publish)
        self.admin = Admin(self.registry, self._to_gateway, settings.request_timeout_s)
        self.handoffs = Handoffs(settings, self.store, self.sessions, self.turns, self._to_client,
                                 self.gateways.send, self._end_session, self._to_worker)  # (issue 14)
        self.client_turns = ClientTurns(self.turns, self.store, self._to_worker, self._to_client,
                                        self.handoffs.on_user_turn, self.sessions)  # (OpenAI Realtime)

    # --- lifecycle -----------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Bind, serve until SIGTERM/SIGINT (or `stop`), then close everything it opened."""
        try:
            await self.store.open()  # a locked or corrupt store stops the start, loudly
        except StoreError as exc:
            log.critical("conversation store unusable: %s", exc)
            raise
        await self.conversations.purge(force=True)
        await self.handoffs.restore()  # handoffs a previous run left open
        plane = self._plane = Plane(self.settings, "orchestrator")
        try:
            s = self.settings
            self._control = plane.sender(plane.pub(s.control), "control", patience_s=0.05)
            plane.read_with_peer(plane.pull(s.ingress, domain="ingress"), ingress_decoder(),
                                 self.on_ingress, "ingress")
            plane.read(plane.pull(s.results, domain="results"), result_decoder(),
                       self.on_result, "results")
            plane.read(plane.pull(s.watchdog, domain="watchdog"), watchdog_decoder(),
                       self.on_watchdog, "watchdog")
            plane.spawn(self._housekeeping(), "housekeeping")
            declare_series()
            log.info("orchestrator up", extra={"ingress": s.ingress, "curve": plane.curve})
            await self._until_stopped(stop)
        finally:
            await plane.close()
            await self.turns.flush()
            await self.store.close()

    @staticmethod
    async def _until_stopped(stop: asyncio.Event | None) -> None:
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    async def _housekeeping(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.settings.heartbeat_interval_s / 2)

    async def tick(self) -> None:
        """One round of housekeeping: ping workers, publish readiness, forget silent instances
        and gateways (ending their sessions), expire waits, jobs and turns."""
        await self._publish(Ping())
        await self._publish(StackStatus(ready=self.registry.ready_counts(),
                                        incarnation=self.incarnation))
        for dead in self.registry.reap():
            await self._lost(dead.kind, dead.instance_id)
        for gateway_id in self.gateways.reap():
            await self._end_gateway_sessions(gateway_id, "gateway_lost")
        await self.recovery.retry_waits()
        await self.recovery.expire_waits()
        await self.jobs.expire()
        await self.admin.expire()
        await self.conversations.purge()
        await self.handoffs.expire()
        await self._end_idle()
        await self.overload.update()  # (back down when the load has gone)
        for session in list(self.sessions.values()):
            await self.turns.check_timeouts(session)
            await self.recovery.check_asr_stall(session, self.settings.asr_stall_s)

    # --- gateways -> orchestrator --------------------------------------------------------------

    def _gateway_of(self, message: IngressMessage, peer: str) -> str | None:
        """The gateway a frame comes from. Under CURVE its key says so (a different claim in
        the frame is refused: None); without, the frame's claim (only the service user can
        reach the plane), or "" when a frame names none."""
        claimed = getattr(message, "gateway_id", "")
        if not peer:  # under CURVE every admitted peer has an identity: none is no gateway
            return None if self._plane is not None and self._plane.curve else claimed
        if not peer.startswith(GATEWAY_PREFIX):
            return None
        actual = peer.removeprefix(GATEWAY_PREFIX)
        return actual if claimed in ("", actual) else None

    async def on_ingress(self, message: IngressMessage, peer: str = "") -> None:
        gateway_id = self._gateway_of(message, peer)
        if gateway_id is None:
            DROPPED_FRAMES.labels("not_permitted").inc()
            log.warning("frame refused: gateway claim does not match its key",
                        extra={"frame": type(message).__name__, "peer": peer})
            return
        replies_to = gateway_id or self.settings.gateway_id  # frames from an older gateway
        if self.gateways.link(replies_to) is None:  # no configured endpoint: cannot be answered
            DROPPED_FRAMES.labels("not_permitted").inc()
            return
        match message:
            case GatewayHeartbeat():
                await self._on_gateway_beat(replies_to, message.incarnation)
            case SessionStart():
                await self._start_session(message, replies_to)
            case HistoryRequest():
                await self.conversations.history(message, replies_to)
            case SessionList():
                await self.conversations.list(message, replies_to)
            case SessionDelete():
                self.gateways.send(replies_to, await self.conversations.delete(message, self._erased))
            case ChatJob() | SpeakJob() | TranscribeJob():
                self.gateways.seen(replies_to)
                await self.jobs.submit(message, replies_to)
            case JobCancel():
                await self.jobs.cancel(message.session_id, gateway_id)
            case AdminRequest():
                await self.admin.handle(message, replies_to)
            case HandoffAsk():
                await self.handoffs.ask(message, replies_to)
            case OperatorRequest():
                await self.handoffs.on_operator(message, replies_to)
            case _:
                await self._on_session_frame(message, gateway_id)

    async def _on_session_frame(self, message: SessionFrame, gateway_id: str) -> None:
        """Frames of a live session, from the gateway holding it; anything else is dropped
        (no ASR stream, no turn, no state is ever made for a session nobody started)."""
        session = self.sessions.get(message.session_id)
        if session is None or gateway_id not in ("", session.gateway_id):
            DROPPED_FRAMES.labels("unknown_session").inc()
            return
        session.active_at = time.monotonic()  # audio or a message: not idle (orchestrator/idle.py)
        match message:
            case AudioIn():
                session.keep_audio(message.pcm, self._max_audio_bytes)
                session.audio_at = time.monotonic()
                await self._to_worker(session, "asr", message)
            case EndTurn():
                session.awaiting_final = session.manual  # (a reply asked now waits for its words)
                await self._to_worker(session, "asr", message)
            case TextIn():
                await self._on_text(session, message)
            case SessionEnd():
                await self._end_session(session, message.reason)
            case PlaybackMark():
                self.turns.on_playback(session, message)
            case SessionConfig():  # the client's prompt for the next turns; its silence to the ASR
                session.system_prompt, session.silence_ms = message.system_prompt, message.silence_ms
                session.speed, session.manual = message.speed, message.manual_turns
                message.partials = self.overload.partials_on  # (the orchestrator's to say)
                await self._to_worker(session, "asr", message)
                await self.client_turns.configured(session)
            case HistoryAdd() | HistoryDelete() | Respond() | ClearAudio():  # (OpenAI Realtime)
                await self.client_turns.handle(session, message)
            case CancelTurn():
                await self.turns.stop(session, message.turn_id)

    async def _on_gateway_beat(self, gateway_id: str, incarnation: str) -> None:
        for session_id in self.gateways.returned(gateway_id, incarnation):  # it had only stalled
            self.gateways.send(gateway_id, ErrorEvent(
                session_id=session_id, code="gateway_lost", fatal=True,
                message="the gateway stopped answering; the session ended (its history is kept)"))
        if self.gateways.beat(gateway_id, incarnation):
            log.warning("gateway restarted: its old sessions end", extra={"gateway_id": gateway_id})
            await self._end_gateway_sessions(gateway_id, "gateway_restarted")

    async def _end_gateway_sessions(self, gateway_id: str, reason: str) -> None:
        for session in [s for s in self.sessions.values() if s.gateway_id == gateway_id]:
            if reason == "gateway_lost":  # told if the gateway returns (orchestrator/gateways.py)
                self.gateways.orphan(gateway_id, session.session_id)
            await self._end_session(session, reason)
        await self.jobs.cancel_gateway(gateway_id)
        await self.handoffs.drop_gateway(gateway_id)

    async def _on_text(self, session: Session, message: TextIn) -> None:
        """A typed turn: shown to the client as the user's final words, then answered exactly
        like a spoken one (barge-in on a reply being played included)."""
        if not message.text.strip():
            return
        # The id `turns.start` is about to give the reply, so the client pairs them as for speech.
        heard = message.confidence  # a transcript made at the gateway keeps its ASR confidence
        final = TranscriptChunk(text=message.text.strip(), is_final=True,
                                confidence=1.0 if heard is None else heard,
                                language=session.language, turn_id=session.turns + 1)
        await self._to_client(session, final)
        log.info("user turn (typed)", extra={"session_id": session.session_id,
                                             "text": content(final.text)})
        if not await self.handoffs.on_user_turn(session, final.text, None):  # (handoff area)
            await self.turns.start(session, final.text, confidence=heard)

    async def _start_session(self, start: SessionStart, gateway_id: str) -> None:
        self.gateways.seen(gateway_id)
        live = self.sessions.get(start.session_id)
        if live is not None and (live.gateway_id, live.principal) != (gateway_id, start.principal):
            # Someone else's live session: refused with a neutral code, the session untouched.
            DROPPED_FRAMES.labels("not_permitted").inc()
            log.warning("session start refused: held by another gateway or principal",
                        extra={"session_id": start.session_id, "gateway_id": gateway_id})
            self.gateways.send(gateway_id, ErrorEvent(
                session_id=start.session_id, code="session_unavailable", fatal=True,
                message="this session cannot be started; start a new one"))
            return
        if live is not None:  # the same owner starts it again: same history, same instances
            await self.turns.cancel(live, tell_client=False)
        session = Session(
            start.session_id,
            gateway_id,
            start.language or self.settings.language,
            self.settings.history_turns,
            max_new_tokens=self.settings.llm_max_new_tokens,
            principal=start.principal,
            system_prompt=start.system_prompt,
            silence_ms=start.silence_ms,
            speed=start.speed,
            manual=start.manual_turns,
        )
        if live is not None:
            session.pins = live.pins  # (their session counts stay right)
            session.history, session.turns = live.history, live.turns
            session.keys, session.added = live.keys, live.added
        if not await self._resume(session, gateway_id):
            return
        self.sessions[start.session_id] = session
        await self.handoffs.on_session_start(session)
        log.info("session started", extra={"session_id": start.session_id, "gateway_id": gateway_id})
        await self._to_worker(session, "asr", start)
        await self.client_turns.configured(session)

    async def _resume(self, session: Session, gateway_id: str) -> bool:
        """Continue a stored conversation of the same principal; refuse someone else's id with
        the same neutral answer as a live one (saying nothing of whether it exists)."""
        try:
            mine = await self.conversations.resume(session)
        except StoreError:
            log.exception("conversation store: session not resumed", extra={"session_id": session.session_id})
            mine = True  # the conversation goes on; only its stored past is missing
        if not mine:
            DROPPED_FRAMES.labels("not_permitted").inc()
            self.gateways.send(gateway_id, ErrorEvent(
                session_id=session.session_id, code="session_unavailable", fatal=True,
                message="this session cannot be started; start a new one"))
        return mine

    async def _erased(self, session: Session) -> None:
        """A live session whose conversation is being erased: its client is told and it ends."""
        await self._to_client(session, ErrorEvent(code="session_deleted", fatal=True,
                                                  message="this conversation was deleted"))
        await self._end_session(session, "deleted")
        await self.turns.flush()  # its interrupted turn's write lands before the erasure, not after

    # --- the overload ladder (orchestrator/overload.py) ---------------------------------------------

    def _llm_load(self) -> float:
        llm_jobs = sum(1 for job in self.jobs.active.values() if job.kind == "llm")
        infos = [i.info for i in self.registry.alive("llm") if not i.leaving]
        return llm_load(self.sessions.values(), llm_jobs, infos, self.settings)

    def _asr_config(self, session: Session) -> SessionConfig:
        """The session's ASR settings as they are, with the ladder's partials."""
        return SessionConfig(session_id=session.session_id, silence_ms=session.silence_ms,
                             manual_turns=session.manual, partials=self.overload.partials_on)

    async def _partials(self, on: bool) -> None:
        """The ladder entered or left "fewer partials": every session's ASR is told."""
        for session in list(self.sessions.values()):
            await self._to_worker(session, "asr", self._asr_config(session))
            OVERLOAD_ACTIONS.labels("partials_on" if on else "partials_off").inc()

    def _turn_models(self, session: Session) -> list[TurnModel]:
        """The models that served this session's turn: the pinned instances' own info."""
        models = []
        for kind, instance_id in sorted(session.pins.items()):
            instance = self.registry.get(instance_id)
            if instance is not None:
                info = instance.info
                models.append(TurnModel(kind, info.get("name") or instance.model,
                                        info.get("version", ""), info.get("sha256", "")))
        return models

    async def _end_idle(self) -> None:
        """End the sessions silent past `session_idle_s`: the client is told why (the gateway
        closes it with 1008), the live state goes, the stored history stays."""
        limit = self.settings.session_idle_s
        for session in idle_sessions(list(self.sessions.values()), limit, time.monotonic()):
            if self.handoffs.holds(session.session_id):
                continue  # waiting for or talking with a person: the handoff has its own timeout
            log.info("session idle: ended", extra={"session_id": session.session_id})
            await self._to_client(session, ErrorEvent(code=IDLE_REASON, fatal=True,
                                                      message=idle_message(limit)))
            await self._end_session(session, IDLE_REASON)

    async def _end_session(self, session: Session, reason: str) -> None:
        if self.sessions.get(session.session_id) is not session:
            return
        del self.sessions[session.session_id]
        await self.handoffs.on_session_end(session)
        SESSIONS_ENDED.labels(metric_reason(reason)).inc()
        try:
            await self.store.end_session(session.session_id, reason)
        except StoreError:
            log.exception("conversation store: end not written", extra={"session_id": session.session_id})
        await self.turns.cancel(session, tell_client=False)
        await self._to_worker(session, "asr", SessionEnd(reason=reason))
        for instance_id in session.pins.values():
            instance = self.registry.get(instance_id)
            if instance is not None:
                instance.sessions = max(0, instance.sessions - 1)
        log.info("session ended", extra={"session_id": session.session_id, "reason": reason})

    # --- workers -> orchestrator ---------------------------------------------------------------

    async def on_result(self, message: ResultMessage) -> None:
        match message:
            case Ready() | Heartbeat():
                await self._announce(message)
            case Leaving():
                await self._on_leaving(message)
            case WarmupDone():
                await self.admin.on_warmup_done(message)
            case TokenChunk() | AudioChunk() | Transcription() | WorkerError() if self.jobs.owns(
                message.session_id
            ):
                await self.jobs.on_result(message)
            case TokenChunk() | WorkerError() if self.handoffs.judging(message.request_id):
                await self.handoffs.on_judgment(message)  # the handoff's LLM tier
            case WorkerError():
                await self._on_worker_error(message)
            case Transcription():
                pass  # a job that was cancelled or timed out
            case _:
                await self._to_turns(message)

    async def _to_turns(self, message: ResultMessage) -> None:
        session = self.sessions.get(message.session_id)
        if session is None:
            return
        if isinstance(message, TranscriptChunk | VadEvent | TurnHypothesis):
            source = message.instance_id or message.request_id  # older ASR workers: request_id
            if source and source != session.pins.get("asr"):
                return  # from an ASR instance this session has left (declared dead)
            session.asr_heard_at = time.monotonic()
            if isinstance(message, VadEvent) and message.event == "speech_start":
                session.speech_open = True
            elif isinstance(message, TranscriptChunk) and message.is_final:
                session.speech_open = False
        match message:
            case TranscriptChunk():
                await self._on_transcript(session, message)
            case VadEvent(event="speech_start" | "speech_resume"):
                if message.event == "speech_start":  # OpenAI Realtime's speech_started (before the cut)
                    await self._to_client(session, VadEvent(turn_id=message.turn_id, event=message.event,
                                                            at_ms=message.at_ms))
                await self.turns.on_speech(session, message.event)
            case TurnHypothesis() if not self.handoffs.holds(session.session_id) and not session.manual:
                await self.turns.on_hypothesis(session, message)
            case TokenChunk():
                await self.turns.on_token(session, message)
            case AudioChunk():
                await self.turns.on_audio(session, message)

    def _configured(self, kind: WorkerKind, endpoint: str) -> bool:
        """Is `endpoint` one a worker of `kind` is configured to bind? (A worker cannot
        announce an address of its choosing and so draw sessions to it.)"""
        expected = [self.settings.work_endpoint(kind, i) for i in range(self.settings.replicas(kind))]
        if endpoint in expected:
            return True
        # Containers may announce their own address (advertise_host: replicas of one service
        # differ only there): then the host is theirs to say, the port must still be configured.
        if getattr(self.settings, "advertise_host", "") and endpoint.startswith("tcp://"):
            return endpoint.rpartition(":")[2] in {e.rpartition(":")[2] for e in expected}
        return False

    async def _announce(self, message: Ready | Heartbeat) -> None:
        if isinstance(message, Heartbeat) and self.registry.get(message.instance_id):
            self.registry.seen(message.instance_id)
            return
        kind = message.kind
        if not kind or not self._configured(kind, message.endpoint):
            DROPPED_FRAMES.labels("not_permitted").inc()
            log.warning("announcement refused: not a configured work endpoint",
                        extra={"kind": kind, "endpoint": message.endpoint})
            return
        info = message.info or {"name": message.model}  # (beats of older workers carry no info)
        _, replaced = self.registry.announce(
            kind, message.instance_id, message.endpoint, message.model, info
        )
        if replaced is not None:  # restarted on the same endpoint before anyone noticed
            await self._lost(kind, replaced)
        await self.recovery.on_ready(kind)
        await self.jobs.on_ready(kind)

    async def _lost(self, kind: WorkerKind, instance_id: str) -> None:
        """An instance is gone: replay the sessions' and the jobs' work it had in hand."""
        await self.recovery.lost(kind, instance_id)
        await self.jobs.lost(kind, instance_id)

    async def on_watchdog(self, exited: WorkerExited) -> None:
        """The watchdog saw a worker process die: act now, not after missed heartbeats. (Its
        own socket: nothing else can send this.)"""
        kind = exited.kind
        if not is_worker_kind(kind) or not 0 <= exited.instance < self.settings.replicas(kind):
            DROPPED_FRAMES.labels("not_permitted").inc()
            return
        if exited.gave_up:
            RESTART_BUDGET_EXHAUSTED.labels(kind).inc()
            log.error("worker restart budget exhausted", extra={"program": exited.program})
        else:
            WORKER_RESTARTS.labels(kind).inc()
        instance = self.registry.by_endpoint(self.settings.work_endpoint(kind, exited.instance))
        if instance is not None:
            self.registry.drop(instance)
            await self._lost(instance.kind, instance.instance_id)

    async def _on_leaving(self, leaving: Leaving) -> None:
        """A worker stops on purpose: new work goes elsewhere (or waits for its restart); the
        ASR's current utterances move now, LLM and TTS work in hand finishes there, and what
        is still in flight when it is gone is replayed."""
        instance = self.registry.get(leaving.instance_id)
        if instance is None:
            return
        instance.leaving = True
        if leaving.gone:
            self.registry.drop(instance)
            await self._lost(instance.kind, instance.instance_id)
        elif instance.kind == "asr":
            await self.recovery.lost(instance.kind, instance.instance_id)

    async def _on_transcript(self, session: Session, chunk: TranscriptChunk) -> None:
        await self._to_client(session, chunk)
        if not chunk.is_final:
            self.handoffs.on_partial(session, chunk)  # an operator holding the caller hears it live
        if chunk.is_final:
            session.audio_heard_until(chunk.end_ms)
            log.info("user turn", extra={"session_id": session.session_id, "text": content(chunk.text)})
            if session.manual:  # held until the client asks for the reply
                await self.client_turns.on_final(session, chunk)
            elif not await self.handoffs.on_user_turn(session, chunk.text, chunk.confidence):
                await self.turns.on_final(session, chunk)

    async def _on_worker_error(self, error: WorkerError) -> None:
        session = self.sessions.get(error.session_id)
        if session is not None:
            await self._to_client(
                session, ErrorEvent(code=error.code or f"{error.kind}_error", message=error.message)
            )
            if error.kind == "llm":
                await self.turns.on_llm_failed(session, error.request_id)

    # --- sending (never waits on a peer: each has its own queue) -----------------------------

    def _connect_worker(self, endpoint: str) -> Sender:
        assert self._plane is not None
        return self._plane.sender(self._plane.push(endpoint, server="worker"), endpoint)

    def _connect_gateway(self, gateway_id: str, endpoint: str) -> Sender:
        assert self._plane is not None
        sock = self._plane.push(endpoint, server=gateway_identity(gateway_id))
        return self._plane.sender(sock, f"gateway:{gateway_id}")

    def _disconnect(self, sender: Sender) -> None:
        if sender.task is not None:
            sender.task.cancel()
        if self._plane is not None:
            self._plane.close_socket(sender.sock)

    async def _to_gateway(self, gateway_id: str, frame: Frame) -> None:
        self.gateways.send(gateway_id, frame)

    async def _publish(self, frame: Frame) -> None:
        if self._control is not None:
            self._control.put(frame)

    async def _to_worker(self, session: Session, kind: WorkerKind, frame: Frame) -> bool:
        instance = self._pinned(session, kind)
        if instance is None:
            self.recovery.wait_for(session, kind)
            return False
        frame.session_id = session.session_id
        if self.registry.send(instance, frame):
            if isinstance(frame, SessionStart) and not self.overload.partials_on:
                # A stream (re)opened under overload, a replay included: no partials either.
                self.registry.send(instance, self._asr_config(session))
            return True
        self.recovery.wait_for(session, kind)  # its queue is full or its last frame stuck
        return False

    def _pinned(self, session: Session, kind: WorkerKind) -> Instance | None:
        instance = self.registry.serving(kind, session.pins.get(kind))
        if instance is not None and session.pins.get(kind) != instance.instance_id:
            session.pins[kind] = instance.instance_id
            instance.sessions += 1
        return instance

    async def _to_client(self, session: Session, frame: Frame) -> None:
        frame.session_id = session.session_id
        self.gateways.send(session.gateway_id, frame)
