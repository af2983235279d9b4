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
    Cancel,
    EndTurn,
    ErrorEvent,
    Frame,
    GenerateRequest,
    Heartbeat,
    IngressMessage,
    Ping,
    PlaybackMark,
    Ready,
    ResultMessage,
    SessionEnd,
    SessionStart,
    StackStatus,
    SynthesizeRequest,
    TokenChunk,
    TranscriptChunk,
    TurnEvent,
    VadEvent,
    WorkerError,
    decoder,
)
from common.logs import content
from common.settings import Settings
from orchestrator.registry import Instance, WorkerRegistry
from orchestrator.session import TTS_WINDOW, Session, Turn

log = logging.getLogger(__name__)


class Orchestrator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = WorkerRegistry(settings.heartbeat_interval_s * settings.heartbeat_liveness)
        self.sessions: dict[str, Session] = {}
        self._egress: dict[str, zmq.asyncio.Socket] = {}
        self._control = transport.pub(settings.bindable(settings.control), bind=True)

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
                self._on_playback(message)

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
        await self._cancel_turn(session, tell_client=False)
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
            case VadEvent(event="speech_start"):
                await self._on_speech_start(message)
            case TokenChunk():
                await self._on_token(message)
            case AudioChunk():
                await self._on_audio(message)
            case WorkerError():
                await self._on_worker_error(message)

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
        if not chunk.is_final:
            return
        log.info("user turn", extra={"session_id": session.session_id, "text": content(chunk.text)})
        await self._start_turn(session, chunk.text)

    async def _on_speech_start(self, event: VadEvent) -> None:
        """The user speaks while a reply is under way: that reply stops (barge-in)."""
        session = self.sessions.get(event.session_id)
        if session is not None:
            await self._cancel_turn(session, tell_client=True)

    def _on_playback(self, mark: PlaybackMark) -> None:
        session = self.sessions.get(mark.session_id)
        turn = session.turn if session is not None else None
        if session is None or turn is None or turn.turn_id != mark.turn_id or turn.closed:
            return
        if mark.text:
            turn.played.append(mark.text)
        if mark.done:
            turn.closed = True
            session.remember(turn.user_text, turn.reply_text.strip())

    async def _on_worker_error(self, error: WorkerError) -> None:
        session = self.sessions.get(error.session_id)
        if session is not None:
            await self._to_client(
                session, ErrorEvent(code=error.code or f"{error.kind}_error", message=error.message)
            )

    # --- turns ---------------------------------------------------------------------------------

    async def _start_turn(self, session: Session, user_text: str) -> None:
        await self._cancel_turn(session, tell_client=True)
        session.turns += 1
        turn_id = session.turns
        turn = Turn(turn_id, user_text, request_id=f"{session.session_id}:{turn_id}:llm")
        session.turn = turn
        request = GenerateRequest(
            session_id=session.session_id,
            turn_id=turn_id,
            request_id=turn.request_id,
            messages=session.prompt(self.settings.system_prompt, user_text),
            max_new_tokens=self.settings.llm_max_new_tokens,
            language=session.language,
        )
        if not await self._to_worker(session, "llm", request):
            turn.cancelled = turn.closed = True

    async def _cancel_turn(self, session: Session, *, tell_client: bool) -> None:
        """Stop the turn in progress everywhere; history keeps only what was heard."""
        turn = session.turn
        if turn is None or turn.closed:
            return
        turn.cancelled = turn.closed = True
        cancel = Cancel(session_id=session.session_id, turn_id=turn.turn_id)
        await transport.send(self._control, cancel, timeout_s=0)
        session.remember(turn.user_text, " ".join(turn.played))
        if tell_client and turn.audio_started:
            await self._to_client(session, TurnEvent(turn_id=turn.turn_id, event="tts.cancel"))

    def _current(self, frame: Frame) -> tuple[Session, Turn] | None:
        session = self.sessions.get(frame.session_id)
        if session is None or session.turn is None:
            return None
        turn = session.turn
        if turn.turn_id != frame.turn_id or not turn.active:
            return None  # a superseded or cancelled turn: its late frames go nowhere
        return session, turn

    async def _on_token(self, chunk: TokenChunk) -> None:
        current = self._current(chunk)
        if current is None or chunk.request_id != current[1].request_id:
            return
        session, turn = current
        if chunk.token:
            turn.reply_text += chunk.token
            turn.token_seq += 1
            await self._to_client(
                session, TokenChunk(turn_id=turn.turn_id, seq=turn.token_seq, token=chunk.token)
            )
            for phrase in turn.cutter.feed(chunk.token):
                turn.queue_phrase(phrase)
        if chunk.is_final:
            for phrase in turn.cutter.flush():
                turn.queue_phrase(phrase)
            turn.llm_done = True
        await self._pump_tts(session, turn)

    async def _pump_tts(self, session: Session, turn: Turn) -> None:
        """Hand queued phrases to TTS, keeping at most TTS_WINDOW there at once."""
        while turn.pending and len(turn.in_flight) < TTS_WINDOW:
            phrase = turn.pending.popleft()
            turn.phrases += 1
            request_id = f"{session.session_id}:{turn.turn_id}:tts:{turn.phrases}"
            turn.in_flight[request_id] = phrase
            request = SynthesizeRequest(
                session_id=session.session_id,
                turn_id=turn.turn_id,
                request_id=request_id,
                text=phrase,
                language=session.language,
                sample_rate=self.settings.audio_out_sample_rate,
            )
            await self._to_worker(session, "tts", request)
        if turn.complete:
            await self._finish_turn(session, turn)

    async def _on_audio(self, chunk: AudioChunk) -> None:
        current = self._current(chunk)
        if current is None or chunk.request_id not in current[1].in_flight:
            return
        session, turn = current
        if not turn.audio_started:
            turn.audio_started = True
            await self._to_client(session, TurnEvent(turn_id=turn.turn_id, event="tts.start"))
        request_id = chunk.request_id
        if chunk.payload or chunk.is_final:  # the final marker tells the gateway a phrase ended
            turn.audio_seq += 1
            chunk.seq, chunk.request_id = turn.audio_seq, ""
            await self._to_client(session, chunk)
        if chunk.is_final:
            turn.in_flight.pop(request_id, None)
            await self._pump_tts(session, turn)

    async def _finish_turn(self, session: Session, turn: Turn) -> None:
        """All audio is forwarded; the history is written when the gateway says it was sent."""
        turn.forwarded_all = True
        reply = turn.reply_text.strip()
        await self._to_client(session, TurnEvent(turn_id=turn.turn_id, event="tts.end", text=reply))
        log.info("turn done", extra={"session_id": session.session_id, "turn_id": turn.turn_id})

    # --- sending -------------------------------------------------------------------------------

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
