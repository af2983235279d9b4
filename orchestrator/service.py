"""The orchestrator: sessions, turns and the routing of frames between gateways and workers.

One reader task per socket (ingress from gateways, results from workers) dispatches each frame
with `match`; all state lives on this one event loop, so handlers need no locks.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid

import zmq.asyncio

from common import transport
from common.frames import (
    AdminRequest,
    AudioChunk,
    AudioIn,
    ChatJob,
    EndTurn,
    ErrorEvent,
    Frame,
    Heartbeat,
    HistoryReply,
    HistoryRequest,
    IngressMessage,
    JobCancel,
    Leaving,
    Ping,
    PlaybackMark,
    Ready,
    ResultMessage,
    SessionEnd,
    SessionStart,
    SpeakJob,
    StackStatus,
    TokenChunk,
    TranscribeJob,
    TextIn,
    TranscriptChunk,
    Transcription,
    TurnHypothesis,
    VadEvent,
    WarmupDone,
    WorkerError,
    WorkerExited,
    decoder,
)
from common.languages import registry as languages
from common.logs import content
from common.metrics import RESTART_BUDGET_EXHAUSTED, WORKER_RESTARTS, declare_series
from common.settings import Settings
from orchestrator.admin import Admin
from orchestrator.jobs import Jobs
from orchestrator.recovery import Recovery
from orchestrator.registry import Instance, WorkerRegistry
from orchestrator.session import Session
from orchestrator.turns import Turns

log = logging.getLogger(__name__)


class Orchestrator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = WorkerRegistry(settings.heartbeat_interval_s * settings.heartbeat_liveness)
        self.sessions: dict[str, Session] = {}
        self.incarnation = uuid.uuid4().hex
        self._egress: dict[str, zmq.asyncio.Socket] = {}
        self._max_audio_bytes = int(settings.max_audio_seconds * 32000) + 64000
        self._control = transport.pub(settings.bindable(settings.control), bind=True)
        self.turns = Turns(settings, self._to_worker, self._to_client, self._publish)
        self.recovery = Recovery(self.sessions, self.registry, self.turns, self._to_worker,
                                 self._to_client, settings.request_timeout_s)
        self.jobs = Jobs(settings, self.registry, self._to_gateway, self._publish)
        self.admin = Admin(self.registry, self._to_gateway, settings.request_timeout_s)

    # --- lifecycle -----------------------------------------------------------------------------

    async def serve(self) -> None:
        ingress = transport.pull(self.settings.bindable(self.settings.ingress), bind=True)
        results = transport.pull(self.settings.bindable(self.settings.results), bind=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = [
            asyncio.create_task(
                transport.read_forever(ingress, decoder(IngressMessage), self.on_ingress)
            ),
            asyncio.create_task(
                transport.read_forever(results, decoder(ResultMessage), self.on_result)
            ),
            asyncio.create_task(self._housekeeping()),
        ]
        declare_series()
        log.info("orchestrator up", extra={"ingress": self.settings.ingress})
        await stop.wait()
        await transport.cancel_tasks(tasks)
        transport.close_all()

    async def _housekeeping(self) -> None:
        """Ping workers, publish readiness for gateways, and forget silent instances."""
        while True:
            await transport.send(self._control, Ping(), timeout_s=0)
            await transport.send(
                self._control,
                StackStatus(ready=self.registry.ready_counts(), incarnation=self.incarnation),
                timeout_s=0,
            )
            for dead in self.registry.reap():
                await self._lost(dead.kind, dead.instance_id)
            await self.recovery.expire_waits()
            await self.jobs.expire()
            await self.admin.expire()
            for session in list(self.sessions.values()):
                await self.turns.check_timeouts(session)
                await self.recovery.check_asr_stall(session, self.settings.asr_stall_s)
            await asyncio.sleep(self.settings.heartbeat_interval_s / 2)

    # --- gateways -> orchestrator --------------------------------------------------------------

    async def on_ingress(self, message: IngressMessage) -> None:
        match message:
            case SessionStart():
                await self._start_session(message)
            case AudioIn():
                session = self.sessions.get(message.session_id)
                if session is not None:
                    session.keep_audio(message.pcm, self._max_audio_bytes)
                    session.audio_at = time.monotonic()
                    await self._to_worker(session, "asr", message)
            case EndTurn():
                session = self.sessions.get(message.session_id)
                if session is not None:
                    await self._to_worker(session, "asr", message)
            case TextIn():
                await self._on_text(message)
            case SessionEnd():
                await self._end_session(message)
            case HistoryRequest():
                await self._history(message)
            case PlaybackMark():
                session = self.sessions.get(message.session_id)
                if session is not None:
                    self.turns.on_playback(session, message)
            case ChatJob() | SpeakJob() | TranscribeJob():
                await self.jobs.submit(message)
            case JobCancel():
                await self.jobs.cancel(message.session_id)
            case AdminRequest():
                await self.admin.handle(message)

    async def _on_text(self, message: TextIn) -> None:
        """A typed turn: shown to the client as the user's final words, then answered exactly
        like a spoken one (barge-in on a reply being played included)."""
        session = self.sessions.get(message.session_id)
        if session is None or not message.text.strip():
            return
        final = TranscriptChunk(text=message.text.strip(), is_final=True, confidence=1.0,
                                language=session.language)
        await self._to_client(session, final)
        log.info("user turn (typed)", extra={"session_id": session.session_id,
                                             "text": content(final.text)})
        await self.turns.start(session, final.text)

    async def _history(self, request: HistoryRequest) -> None:
        session = self.sessions.get(request.session_id)
        reply = HistoryReply(session_id=request.session_id, request_id=request.request_id)
        if session is not None:
            reply.found, reply.turns, reply.messages = True, session.turns, list(session.history)
            reply.language = session.language
            reply.system_prompt = self.settings.system_prompt or languages.get(session.language).system_prompt
        sock = self._egress_socket(request.reply_to)
        await transport.send(sock, reply, timeout_s=2.0)

    async def _start_session(self, start: SessionStart) -> None:
        session = Session(
            start.session_id,
            start.reply_to,
            start.language or self.settings.language,
            self.settings.history_turns,
            max_new_tokens=self.settings.llm_max_new_tokens,
        )
        self.sessions[start.session_id] = session
        log.info("session started", extra={"session_id": start.session_id})
        await self._to_worker(session, "asr", start)

    async def _end_session(self, end: SessionEnd) -> None:
        session = self.sessions.pop(end.session_id, None)
        if session is None:
            return
        await self.turns.cancel(session, tell_client=False)
        await self._to_worker(session, "asr", end)
        for instance_id in session.pins.values():
            instance = self.registry.get(instance_id)
            if instance is not None:
                instance.sessions -= 1
        log.info("session ended", extra={"session_id": end.session_id, "reason": end.reason})

    # --- workers -> orchestrator ---------------------------------------------------------------

    async def on_result(self, message: ResultMessage) -> None:
        match message:
            case Ready() | Heartbeat():
                await self._announce(message)
            case WorkerExited():
                await self._on_exited(message)
            case Leaving():
                await self._on_leaving(message)
            case WarmupDone():
                await self.admin.on_warmup_done(message)
            case TokenChunk() | AudioChunk() | Transcription() | WorkerError() if self.jobs.owns(
                message.session_id
            ):
                await self.jobs.on_result(message)
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
        from_asr = isinstance(message, TranscriptChunk | VadEvent | TurnHypothesis)
        if from_asr and message.request_id and message.request_id != session.pins.get("asr"):
            return  # from an ASR instance this session has left (declared dead)
        if from_asr:
            session.asr_heard_at = time.monotonic()
            if isinstance(message, VadEvent) and message.event == "speech_start":
                session.speech_open = True
            elif isinstance(message, TranscriptChunk) and message.is_final:
                session.speech_open = False
        match message:
            case TranscriptChunk():
                await self._on_transcript(session, message)
            case VadEvent(event="speech_start" | "speech_resume"):
                await self.turns.on_speech(session, message.event)
            case TurnHypothesis():
                await self.turns.on_hypothesis(session, message)
            case TokenChunk():
                await self.turns.on_token(session, message)
            case AudioChunk():
                await self.turns.on_audio(session, message)

    async def _announce(self, message: Ready | Heartbeat) -> None:
        if isinstance(message, Heartbeat) and self.registry.get(message.instance_id):
            self.registry.seen(message.instance_id)
            return
        info = message.info if isinstance(message, Ready) else {"name": message.model}
        _, replaced = self.registry.announce(
            message.kind, message.instance_id, message.endpoint, message.model, info
        )
        if replaced is not None:  # restarted on the same endpoint before anyone noticed
            await self._lost(message.kind, replaced)
        await self.recovery.on_ready(message.kind)
        await self.jobs.on_ready(message.kind)

    async def _lost(self, kind: str, instance_id: str) -> None:
        """An instance is gone: replay the sessions' and the jobs' work it had in hand."""
        await self.recovery.lost(kind, instance_id)
        await self.jobs.lost(kind, instance_id)

    async def _on_exited(self, exited: WorkerExited) -> None:
        """The watchdog saw a worker process die: act now, not after missed heartbeats."""
        if exited.gave_up:
            RESTART_BUDGET_EXHAUSTED.labels(exited.kind).inc()
            log.error("worker restart budget exhausted", extra={"program": exited.program})
        else:
            WORKER_RESTARTS.labels(exited.kind).inc()
        endpoint = self.settings.work_endpoint(exited.kind, exited.instance)
        instance = self.registry.by_endpoint(endpoint)
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
        if leaving.gone:
            await self._lost(instance.kind, instance.instance_id)
        elif instance.kind == "asr":
            await self.recovery.lost(instance.kind, instance.instance_id)

    async def _on_transcript(self, session: Session, chunk: TranscriptChunk) -> None:
        await self._to_client(session, chunk)
        if chunk.is_final:
            session.audio_heard_until(chunk.end_ms)
            log.info("user turn", extra={"session_id": session.session_id, "text": content(chunk.text)})
            await self.turns.on_final(session, chunk)

    async def _on_worker_error(self, error: WorkerError) -> None:
        session = self.sessions.get(error.session_id)
        if session is not None:
            await self._to_client(
                session, ErrorEvent(code=error.code or f"{error.kind}_error", message=error.message)
            )

    # --- sending -------------------------------------------------------------------------------

    def _egress_socket(self, endpoint: str) -> zmq.asyncio.Socket:
        sock = self._egress.get(endpoint)
        if sock is None:
            sock = self._egress[endpoint] = transport.push(endpoint)
        return sock

    async def _to_gateway(self, endpoint: str, frame: Frame) -> None:
        if not await transport.send(self._egress_socket(endpoint), frame, timeout_s=2.0):
            log.warning("gateway unreachable; job result dropped", extra={"session_id": frame.session_id})

    async def _publish(self, frame: Frame) -> None:
        await transport.send(self._control, frame, timeout_s=0)

    async def _to_worker(self, session: Session, kind: str, frame: Frame) -> bool:
        instance = self._pinned(session, kind)
        if instance is None:
            self.recovery.wait_for(session, kind)
            return False
        frame.session_id = session.session_id
        if await self.registry.send(instance, frame):
            return True
        self.recovery.wait_for(session, kind)  # its socket did not take the frame in time
        return False

    def _pinned(self, session: Session, kind: str) -> Instance | None:
        instance = self.registry.get(session.pins.get(kind))
        if instance is not None and self.registry.is_alive(instance) and not instance.leaving:
            return instance
        instance = self.registry.pick(kind)
        if instance is not None:
            session.pins[kind] = instance.instance_id
            instance.sessions += 1
        return instance

    async def _to_client(self, session: Session, frame: Frame) -> None:
        frame.session_id = session.session_id
        sock = self._egress_socket(session.reply_to)
        if not await transport.send(sock, frame, timeout_s=2.0):
            log.warning("gateway unreachable; frame dropped", extra={"session_id": session.session_id})
