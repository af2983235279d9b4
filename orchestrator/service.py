"""The orchestrator: sessions, turns and the routing of frames between gateways and workers.

One reader task per socket (ingress from gateways, results from workers) dispatches each frame
with `match`; all state lives on this one event loop, so handlers need no locks.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import zmq.asyncio

from common import transport
from common.frames import (
    AudioChunk,
    AudioIn,
    EndTurn,
    ErrorEvent,
    Frame,
    Heartbeat,
    IngressMessage,
    Ping,
    PlaybackMark,
    Ready,
    ResultMessage,
    SessionEnd,
    SessionStart,
    StackStatus,
    TokenChunk,
    TranscriptChunk,
    TurnHypothesis,
    VadEvent,
    WorkerError,
    decoder,
)
from common.logs import content
from common.settings import Settings
from orchestrator.registry import Instance, WorkerRegistry
from orchestrator.session import Session
from orchestrator.turns import Turns

log = logging.getLogger(__name__)


class Orchestrator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = WorkerRegistry(settings.heartbeat_interval_s * settings.heartbeat_liveness)
        self.sessions: dict[str, Session] = {}
        self._egress: dict[str, zmq.asyncio.Socket] = {}
        self._control = transport.pub(settings.bindable(settings.control), bind=True)
        self.turns = Turns(settings, self._to_worker, self._to_client, self._publish)

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
        log.info("orchestrator up", extra={"ingress": self.settings.ingress})
        await stop.wait()
        await transport.cancel_tasks(tasks)
        transport.close_all()

    async def _housekeeping(self) -> None:
        """Ping workers, publish readiness for gateways, and forget silent instances."""
        while True:
            await transport.send(self._control, Ping(), timeout_s=0)
            await transport.send(
                self._control, StackStatus(ready=self.registry.ready_counts()), timeout_s=0
            )
            for dead in self.registry.reap():
                self._unpin(dead)
            await asyncio.sleep(self.settings.heartbeat_interval_s / 2)

    def _unpin(self, dead: Instance) -> None:
        for session in self.sessions.values():
            if session.pins.get(dead.kind) == dead.instance_id:
                del session.pins[dead.kind]

    # --- gateways -> orchestrator --------------------------------------------------------------

    async def on_ingress(self, message: IngressMessage) -> None:
        match message:
            case SessionStart():
                await self._start_session(message)
            case AudioIn() | EndTurn():
                session = self.sessions.get(message.session_id)
                if session is not None:
                    await self._to_worker(session, "asr", message)
            case SessionEnd():
                await self._end_session(message)
            case PlaybackMark():
                session = self.sessions.get(message.session_id)
                if session is not None:
                    self.turns.on_playback(session, message)

    async def _start_session(self, start: SessionStart) -> None:
        session = Session(
            start.session_id,
            start.reply_to,
            start.language or self.settings.language,
            self.settings.history_turns,
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
                self._announce(message)
            case TranscriptChunk():
                await self._on_transcript(message)
            case WorkerError():
                await self._on_worker_error(message)
            case _:
                await self._to_turns(message)

    async def _to_turns(self, message: ResultMessage) -> None:
        session = self.sessions.get(message.session_id)
        if session is None:
            return
        match message:
            case VadEvent():
                await self.turns.on_speech(session, message.event)
            case TurnHypothesis():
                await self.turns.on_hypothesis(session, message)
            case TokenChunk():
                await self.turns.on_token(session, message)
            case AudioChunk():
                await self.turns.on_audio(session, message)

    def _announce(self, message: Ready | Heartbeat) -> None:
        if isinstance(message, Heartbeat) and self.registry.get(message.instance_id):
            self.registry.seen(message.instance_id)
            return
        info = message.info if isinstance(message, Ready) else {"name": message.model}
        _, replaced = self.registry.announce(
            message.kind, message.instance_id, message.endpoint, message.model, info
        )
        if replaced is not None:
            for session in self.sessions.values():
                if session.pins.get(message.kind) == replaced:
                    session.pins[message.kind] = message.instance_id

    async def _on_transcript(self, chunk: TranscriptChunk) -> None:
        session = self.sessions.get(chunk.session_id)
        if session is None:
            return
        await self._to_client(session, chunk)
        if chunk.is_final:
            log.info("user turn", extra={"session_id": session.session_id, "text": content(chunk.text)})
            await self.turns.on_final(session, chunk)

    async def _on_worker_error(self, error: WorkerError) -> None:
        session = self.sessions.get(error.session_id)
        if session is not None:
            await self._to_client(
                session, ErrorEvent(code=error.code or f"{error.kind}_error", message=error.message)
            )

    # --- sending -------------------------------------------------------------------------------

    async def _publish(self, frame: Frame) -> None:
        await transport.send(self._control, frame, timeout_s=0)

    async def _to_worker(self, session: Session, kind: str, frame: Frame) -> bool:
        instance = self._pinned(session, kind)
        if instance is None:
            await self._to_client(
                session, ErrorEvent(code=f"{kind}_unavailable", message=f"no {kind} worker is ready")
            )
            return False
        frame.session_id = session.session_id
        return await self.registry.send(instance, frame)

    def _pinned(self, session: Session, kind: str) -> Instance | None:
        instance = self.registry.get(session.pins.get(kind))
        if instance is not None and self.registry.is_alive(instance):
            return instance
        instance = self.registry.pick(kind)
        if instance is not None:
            session.pins[kind] = instance.instance_id
            instance.sessions += 1
        return instance

    async def _to_client(self, session: Session, frame: Frame) -> None:
        frame.session_id = session.session_id
        sock = self._egress.get(session.reply_to)
        if sock is None:
            sock = self._egress[session.reply_to] = transport.push(session.reply_to)
        if not await transport.send(sock, frame, timeout_s=2.0):
            log.warning("gateway unreachable; frame dropped", extra={"session_id": session.session_id})
