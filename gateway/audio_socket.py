"""The WebSocket transport of a voice session: `/ws/audio`, from `start` to disconnect.

The first message must be a JSON `start`; the session (gateway/session.py) validates it,
authenticates its `auth_token` (or the Authorization header), takes a request token and a
concurrent-session slot, and refuses with an `error` event and a close code that says why.
After it, binary messages are audio (PCM16 at 16 kHz, or Opus packets decoded here) and text
messages are control messages; a bad one gets an `error` event and the session goes on. Reply
audio goes out as paced PCM16, or Opus encoded here after pacing (one 20 ms packet a message).

The whole connection runs in one try/finally that closes the session, so a client that leaves
at any point, even before `session.started`, leaks no slot and no orchestrator session.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from common.audio import frame_bytes
from common.settings import Settings
from gateway.auth import bearer
from gateway.bridge import Bridge
from gateway.codec import CodecError, OpusDecoder, OpusEncoder
from gateway.errors import ApiError
from gateway.guard import Guard
from gateway.protocol import (
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    CLOSE_UNSUPPORTED,
    MAX_OPUS_PACKET,
    ProtocolError,
    Start,
    check_audio,
    error_event,
    parse_client_message,
)
from gateway.session import SAMPLE_RATE, Action, TransportClosed, VoiceSession

_GONE = (WebSocketDisconnect, RuntimeError, OSError)  # what sending on a closed socket raises


class WsTransport:
    """Events as JSON text messages, reply audio as binary messages (PCM16 or Opus)."""

    def __init__(self, websocket: WebSocket, settings: Settings) -> None:
        self.ws = websocket
        self.settings = settings
        self.encoder: OpusEncoder | None = None

    async def send_event(self, event: dict[str, Any]) -> None:
        try:
            await self.ws.send_json(event)
        except _GONE as exc:
            raise TransportClosed from exc

    async def send_audio(self, pcm: bytes) -> None:
        packets = [pcm] if self.encoder is None else self.encoder.encode(pcm)
        await self._send_bytes(packets)

    async def end_audio(self) -> None:
        if self.encoder is not None:  # the reply's tail, then a fresh Opus stream per reply
            await self._send_bytes(self.encoder.flush())

    def drop_audio(self) -> None:
        if self.encoder is not None:  # what it holds was cut: start the next reply afresh
            self.encoder = OpusEncoder(SAMPLE_RATE, self.settings.opus_bitrate)

    async def after_audio(self, action: Action) -> None:
        await action()  # a message sent is a message the client has (paced: about to play)

    async def close(self, event: dict[str, Any], close_code: int) -> None:
        reason = f"{event.get('code')}: {event.get('message')}"[:120]  # reasons are <= 123 bytes
        with contextlib.suppress(Exception):
            await self.ws.send_json(event)
            await self.ws.close(code=close_code, reason=reason)

    async def _send_bytes(self, packets: list[bytes]) -> None:
        try:
            for packet in packets:
                await self.ws.send_bytes(packet)
        except _GONE as exc:
            raise TransportClosed from exc


class AudioSocket:
    def __init__(self, websocket: WebSocket, bridge: Bridge, settings: Settings, guard: Guard) -> None:
        self.ws = websocket
        self.settings = settings
        self.max_frame = frame_bytes(settings.max_frame_ms)
        self.transport = WsTransport(websocket, settings)
        self.session = VoiceSession(bridge, settings, guard, self.transport)
        self.decoder: OpusDecoder | None = None

    async def run(self) -> None:
        try:
            await self.ws.accept()
            start = await self._read_start()
            if start is None:
                return
            host = self.ws.client.host if self.ws.client else ""
            await self.session.admit(start.auth_token or bearer(self.ws.headers.get("authorization")),
                                     host, start)
            await self.session.open()
            await self._started(start)
            await self._receive_loop()
        except ProtocolError as exc:
            close = CLOSE_UNSUPPORTED if exc.code.startswith("unsupported") else CLOSE_POLICY
            await self.transport.close(exc.event(), close)
        except ApiError as exc:
            retry = exc.headers.get("Retry-After")
            close = CLOSE_TRY_AGAIN if exc.status in (429, 503) else CLOSE_POLICY
            await self.transport.close(error_event(exc.code, exc.message, int(retry) if retry else None),
                                       close)
        except (TransportClosed, *_GONE):
            pass  # the client left
        finally:
            await self.session.close()

    async def _read_start(self) -> Start | None:
        """Wait for the first message, a JSON `start`; anything else is refused here."""
        try:
            text = await asyncio.wait_for(self.ws.receive_text(), self.settings.start_timeout_s)
        except TimeoutError:
            await self.transport.close(error_event("start_timeout", "no start message received in time"),
                                       CLOSE_POLICY)
            return None
        except (KeyError, RuntimeError, WebSocketDisconnect):  # a binary message first, or gone
            await self.transport.close(
                error_event("start_required", "the first message must be a JSON start"), CLOSE_POLICY)
            return None
        message = parse_client_message(text)
        if not isinstance(message, Start):
            raise ProtocolError("start_required", "the first message must be a start message")
        return message

    async def _started(self, start: Start) -> None:
        opus = start.codec == "opus"
        if opus:
            self.decoder = OpusDecoder(SAMPLE_RATE)
            self.transport.encoder = OpusEncoder(SAMPLE_RATE, self.settings.opus_bitrate)
        audio_out = {"codec": "opus", "sample_rate": 48000, "frame_ms": 20} if opus else \
            {"codec": "pcm16", "sample_rate": self.settings.audio_out_sample_rate}
        await self.transport.send_event(self.session.started_event(audio_out))

    async def _receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if not isinstance(data, bytes):
                await self.session.on_message(str(message.get("text") or ""))
                continue
            try:
                pcm = self._pcm(data)
            except ProtocolError as exc:
                await self.transport.send_event(exc.event())
                continue
            if not await self.session.on_audio(pcm):
                return

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
