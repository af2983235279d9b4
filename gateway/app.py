"""The gateway's HTTP and WebSocket surface (FastAPI)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from common.audio import frame_bytes
from common.frames import (
    AudioChunk,
    AudioIn,
    EndTurn,
    Frame,
    PlaybackMark,
    SessionEnd,
    SessionStart,
    TurnEvent,
)
from common.logs import session_var
from common.metrics import SESSIONS_ACTIVE, exposition
from common.settings import Settings, get_settings
from gateway.bridge import Bridge, Connection
from gateway.latency import AudioClock
from gateway.playback import SessionClosed
from gateway.protocol import (
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    CLOSE_UNSUPPORTED,
    EndTurnMessage,
    ProtocolError,
    Start,
    check_audio,
    check_start,
    event_for,
    parse_client_message,
)

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    bridge = Bridge(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await bridge.start()
        yield
        await bridge.stop()

    app = FastAPI(title="Inzwa gateway", version="0.1.0", lifespan=lifespan)
    app.state.bridge = bridge
    if settings.cors_allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allowed_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    _add_routes(app, bridge, settings)
    return app


def _add_routes(app: FastAPI, bridge: Bridge, settings: Settings) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ok, detail = bridge.ready()
        return JSONResponse({"ready": ok, **detail}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    @app.get("/v1/sessions/{session_id}")
    async def session_history(session_id: str) -> JSONResponse:
        """A live session's dialogue history (what the assistant keeps of each turn)."""
        reply = await bridge.history(session_id)
        if reply is None:
            return JSONResponse({"error": "orchestrator_unavailable"}, status_code=503)
        if not reply.found:
            return JSONResponse({"error": "session_not_found"}, status_code=404)
        history = [{"role": m.role, "content": m.content} for m in reply.messages]
        return JSONResponse({"session_id": session_id, "language": reply.language,
                             "system_prompt": reply.system_prompt, "turns": reply.turns,
                             "history": history})

    @app.websocket("/ws/audio")
    async def ws_audio(websocket: WebSocket) -> None:
        await AudioSocket(websocket, bridge, settings).run()


class AudioSocket:
    """One client connection on /ws/audio, from `start` to disconnect."""

    def __init__(self, websocket: WebSocket, bridge: Bridge, settings: Settings) -> None:
        self.ws = websocket
        self.bridge = bridge
        self.settings = settings
        self.max_frame = frame_bytes(settings.max_frame_ms)
        self.frames_in = 0
        self.clock = AudioClock()

    async def run(self) -> None:
        await self.ws.accept()
        session_id = await self._handshake()
        if session_id is None:
            return
        connection = self.bridge.register(session_id)
        session_var.set(session_id)
        SESSIONS_ACTIVE.inc()
        sender = asyncio.create_task(self._send_loop(connection))
        try:
            await self._receive_loop(session_id)
        finally:
            SESSIONS_ACTIVE.dec()
            self.bridge.unregister(session_id)
            sender.cancel()
            await self.bridge.send(SessionEnd(session_id=session_id, reason="disconnect"))

    async def _handshake(self) -> str | None:
        """Wait for a valid `start`; anything else closes the socket with a reason."""
        try:
            text = await asyncio.wait_for(self.ws.receive_text(), self.settings.start_timeout_s)
            message = parse_client_message(text)
            if not isinstance(message, Start):
                raise ProtocolError("start_required", "the first message must be a start message")
            session_id = check_start(message)
        except TimeoutError:
            await self._refuse("start_timeout", "no start message received in time", CLOSE_POLICY)
            return None
        except (KeyError, RuntimeError):  # a binary message first, or the client left
            await self._refuse("start_required", "the first message must be a JSON start", CLOSE_POLICY)
            return None
        except ProtocolError as exc:
            code = CLOSE_UNSUPPORTED if exc.code.startswith("unsupported") else CLOSE_POLICY
            await self._refuse(exc.code, exc.message, code)
            return None
        if session_id in self.bridge.connections:
            await self._refuse("session_in_use", "that session_id is already connected", CLOSE_POLICY)
            return None
        if not self.bridge.ready()[0]:
            await self._refuse("not_ready", "the assistant is starting; try again", CLOSE_TRY_AGAIN)
            return None
        start = SessionStart(
            session_id=session_id,
            reply_to=self.settings.egress,
            language=message.language or self.settings.language,
            codec=message.codec, sample_rate=message.sample_rate,
        )
        await self.bridge.send(start)
        await self.ws.send_json({"type": "session.started", "session_id": session_id})
        return session_id

    async def _refuse(self, code: str, message: str, close_code: int) -> None:
        with contextlib.suppress(Exception):
            await self.ws.send_json({"type": "error", "code": code, "message": message})
            await self.ws.close(code=close_code, reason=message[:120])

    async def _receive_loop(self, session_id: str) -> None:
        while True:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            try:
                await self._on_message(session_id, message)
            except ProtocolError as exc:
                await self.ws.send_json({"type": "error", "code": exc.code, "message": exc.message})

    async def _on_message(self, session_id: str, message: dict[str, object]) -> None:
        data = message.get("bytes")
        if isinstance(data, bytes):
            check_audio(data, self.max_frame)
            self.clock.received(len(data))
            self.frames_in += 1
            await self.bridge.send(AudioIn(session_id=session_id, seq=self.frames_in, pcm=data))
            return
        parsed = parse_client_message(str(message.get("text") or ""))
        if isinstance(parsed, EndTurnMessage):
            await self.bridge.send(EndTurn(session_id=session_id))
        else:
            raise ProtocolError("already_started", "this session has already started")

    async def _send_loop(self, connection: Connection) -> None:
        try:
            while True:
                await self._deliver(connection.session_id, await connection.outbox.next())
        except SessionClosed as closed:
            log.warning("closing session", extra={"session_id": connection.session_id,
                                                  "code": closed.code})
            await self._refuse(closed.code, closed.message, closed.close_code)
        except (WebSocketDisconnect, RuntimeError):
            return

    async def _deliver(self, session_id: str, frame: Frame) -> None:
        """Send one frame to the client; tell the orchestrator what has been heard."""
        if isinstance(frame, AudioChunk) and not frame.payload:
            if frame.is_final:  # a phrase's end marker: its audio has all gone out
                await self.bridge.send(
                    PlaybackMark(session_id=session_id, turn_id=frame.turn_id, text=frame.text)
                )
            return
        self.clock.observe(frame)
        event = event_for(frame)
        if isinstance(event, bytes):
            await self.ws.send_bytes(event)
        elif event is not None:
            await self.ws.send_json(event)
        if isinstance(frame, TurnEvent) and frame.event == "tts.end":
            await self.bridge.send(PlaybackMark(session_id=session_id, turn_id=frame.turn_id, done=True))
