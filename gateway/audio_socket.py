"""One client connection on `/ws/audio`, from `start` to disconnect.

The handshake authenticates the `start` message's `auth_token` (or the Authorization header),
takes a request token and a concurrent-session slot, and refuses with an `error` event and a
close code that says why. After it, a bad message gets an `error` event and the session goes on.
Audio in is PCM16 at 16 kHz, or Opus packets decoded here; audio out is paced PCM16, or Opus
encoded here after pacing (one 20 ms packet per message). Audio is charged to the caller's daily
quota as it arrives, and one user turn may last at most `max_audio_seconds`: past that the turn
is ended for them (an `error` event says so) rather than left hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import WebSocket, WebSocketDisconnect

from common.audio import frame_bytes
from common.frames import (
    AudioChunk,
    AudioIn,
    EndTurn,
    Frame,
    PlaybackMark,
    SessionEnd,
    SessionStart,
    TranscriptChunk,
    TurnEvent,
)
from common.logs import session_var
from common.metrics import SESSIONS_ACTIVE
from common.settings import Settings
from gateway.auth import Principal, bearer
from gateway.bridge import Bridge, Connection
from gateway.codec import CodecError, OpusDecoder, OpusEncoder
from gateway.errors import ApiError
from gateway.guard import Guard
from gateway.latency import AudioClock
from gateway.playback import SessionClosed
from gateway.protocol import (
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    CLOSE_UNSUPPORTED,
    MAX_OPUS_PACKET,
    EndTurnMessage,
    ProtocolError,
    Start,
    check_audio,
    check_start,
    event_for,
    parse_client_message,
)

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CHARGE_EVERY_S = 1.0  # audio is charged to the daily quota in steps of this much


class AudioSocket:
    def __init__(self, websocket: WebSocket, bridge: Bridge, settings: Settings, guard: Guard) -> None:
        self.ws = websocket
        self.bridge = bridge
        self.settings = settings
        self.guard = guard
        self.max_frame = frame_bytes(settings.max_frame_ms)
        self.frames_in = 0
        self.clock = AudioClock()
        self.principal: Principal | None = None
        self.decoder: OpusDecoder | None = None
        self.encoder: OpusEncoder | None = None
        self.turn_audio_s = 0.0  # audio of the user's current turn
        self.uncharged_s = 0.0

    async def run(self) -> None:
        await self.ws.accept()
        session_id = await self._handshake()
        if session_id is None:
            return
        assert self.principal is not None
        connection = self.bridge.register(session_id, owner=self.principal.id)
        session_var.set(session_id)
        SESSIONS_ACTIVE.inc()
        sender = asyncio.create_task(self._send_loop(connection))
        try:
            await self._receive_loop(session_id)
        finally:
            SESSIONS_ACTIVE.dec()
            self.bridge.unregister(session_id)
            sender.cancel()
            await self.guard.close_session(self.principal)
            await self.bridge.send(SessionEnd(session_id=session_id, reason="disconnect"))

    # --- handshake -----------------------------------------------------------------------------

    async def _handshake(self) -> str | None:
        """Wait for a valid, authorised `start`; anything else closes the socket with a reason."""
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
        if not await self._admit(message):
            return None
        if session_id in self.bridge.connections:
            await self._release_refuse("session_in_use", "that session_id is already connected", CLOSE_POLICY)
            return None
        if not self.bridge.ready()[0]:
            await self._release_refuse("not_ready", "the assistant is starting; try again", CLOSE_TRY_AGAIN)
            return None
        await self._open(session_id, message)
        return session_id

    async def _admit(self, start: Start) -> bool:
        """Auth, the request rate, and a concurrent-session slot for the caller."""
        token = start.auth_token or bearer(self.ws.headers.get("authorization"))
        host = self.ws.client.host if self.ws.client else ""
        try:
            self.principal = await self.guard.check(token, host)
            await self.guard.open_session(self.principal)
        except ApiError as exc:
            close = CLOSE_TRY_AGAIN if exc.status in (429, 503) else CLOSE_POLICY
            await self._refuse(exc.code, exc.message, close, exc.headers.get("Retry-After"))
            return False
        return True

    async def _open(self, session_id: str, start: Start) -> None:
        opus = start.codec == "opus"
        self.decoder = OpusDecoder(SAMPLE_RATE) if opus else None
        self.encoder = OpusEncoder(SAMPLE_RATE, self.settings.opus_bitrate) if opus else None
        await self.bridge.send(SessionStart(
            session_id=session_id, reply_to=self.settings.egress,
            language=start.language or self.settings.language, codec="pcm16", sample_rate=SAMPLE_RATE,
        ))
        audio_out = {"codec": "opus", "sample_rate": 48000, "frame_ms": 20} if opus else \
            {"codec": "pcm16", "sample_rate": self.settings.audio_out_sample_rate}
        await self.ws.send_json({"type": "session.started", "session_id": session_id,
                                 "audio_out": audio_out})

    async def _release_refuse(self, code: str, message: str, close_code: int) -> None:
        assert self.principal is not None
        await self.guard.close_session(self.principal)
        await self._refuse(code, message, close_code)

    async def _refuse(self, code: str, message: str, close_code: int, retry_after: str | None = None) -> None:
        event: dict[str, object] = {"type": "error", "code": code, "message": message}
        if retry_after:
            event["retry_after_s"] = int(retry_after)
        reason = f"{code}: {message}"[:120]  # close reasons are at most 123 bytes
        with contextlib.suppress(Exception):
            await self.ws.send_json(event)
            await self.ws.close(code=close_code, reason=reason)

    # --- client -> assistant -------------------------------------------------------------------

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
            except ApiError as exc:  # the daily audio quota is spent (or its store is down)
                await self._refuse(exc.code, exc.message, CLOSE_POLICY, exc.headers.get("Retry-After"))
                return

    async def _on_message(self, session_id: str, message: dict[str, object]) -> None:
        data = message.get("bytes")
        if isinstance(data, bytes):
            await self._on_audio(session_id, self._pcm(data))
            return
        parsed = parse_client_message(str(message.get("text") or ""))
        if isinstance(parsed, EndTurnMessage):
            self.turn_audio_s = 0.0
            await self.bridge.send(EndTurn(session_id=session_id))
        else:
            raise ProtocolError("already_started", "this session has already started")

    def _pcm(self, data: bytes) -> bytes:
        """A binary message as PCM16 at 16 kHz (decoding Opus), or a ProtocolError."""
        if self.decoder is None:
            check_audio(data, self.max_frame)
            return data
        if not data:
            raise ProtocolError("empty_frame", "binary audio frame is empty")
        if len(data) > MAX_OPUS_PACKET:
            raise ProtocolError("frame_too_large", f"Opus packet of {len(data)} bytes > {MAX_OPUS_PACKET}")
        try:
            pcm = self.decoder.decode(data)
        except CodecError as exc:
            raise ProtocolError("bad_audio", f"undecodable Opus packet: {exc}") from None
        if len(pcm) > self.max_frame:
            raise ProtocolError("frame_too_large", f"Opus packet longer than {self.settings.max_frame_ms} ms")
        return pcm

    async def _on_audio(self, session_id: str, pcm: bytes) -> None:
        if not pcm:
            return  # an Opus decoder still filling its delay line
        seconds = len(pcm) / 2 / SAMPLE_RATE
        self.uncharged_s += seconds
        if self.uncharged_s >= CHARGE_EVERY_S:
            assert self.principal is not None
            await self.guard.charge_audio(self.principal, self.uncharged_s)
            self.uncharged_s = 0.0
        self.clock.received(len(pcm))
        self.frames_in += 1
        await self.bridge.send(AudioIn(session_id=session_id, seq=self.frames_in, pcm=pcm))
        self.turn_audio_s += seconds
        if self.turn_audio_s > self.settings.max_audio_seconds:
            self.turn_audio_s = 0.0
            await self.bridge.send(EndTurn(session_id=session_id))
            raise ProtocolError("audio_too_long", f"a turn may last {self.settings.max_audio_seconds:g} s;"
                                " it was ended here")

    # --- assistant -> client -------------------------------------------------------------------

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
        if isinstance(frame, TranscriptChunk) and frame.is_final:
            self.turn_audio_s = 0.0  # the ASR closed the user's turn
        self.clock.observe(frame)
        ends_reply = isinstance(frame, TurnEvent) and frame.event in ("tts.end", "tts.cancel")
        if ends_reply and self.encoder is not None:
            await self._send_audio(b"", flush=True)
        event = event_for(frame)
        if isinstance(event, bytes):
            await self._send_audio(event)
        elif event is not None:
            await self.ws.send_json(event)
        if isinstance(frame, TurnEvent) and frame.event == "tts.end":
            await self.bridge.send(PlaybackMark(session_id=session_id, turn_id=frame.turn_id, done=True))

    async def _send_audio(self, pcm: bytes, *, flush: bool = False) -> None:
        if self.encoder is None:
            await self.ws.send_bytes(pcm)
            return
        packets = self.encoder.flush() if flush else self.encoder.encode(pcm)
        if flush:  # a fresh encoder per reply: no state carried across replies
            self.encoder = OpusEncoder(SAMPLE_RATE, self.settings.opus_bitrate)
        for packet in packets:
            await self.ws.send_bytes(packet)
