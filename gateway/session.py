"""One voice session, whatever carries it: the WebSocket (`/ws/audio`) or WebRTC (`/rtc/session`).

A transport (gateway/audio_socket.py, gateway/rtc_peer.py) turns its wire into calls on
`VoiceSession` — `admit`, `open`, `on_audio` (PCM16 mono 16 kHz), `on_message` (a JSON control
message) and `close` — and gives the session a `Transport` to send events and reply audio back.
So the orchestrator sees the same SessionStart / AudioIn / EndTurn / TextIn / PlaybackMark
frames from both, reply audio leaves through the same paced Outbox (a barge-in drops what has
not been sent), and bad input gets the same `error` events on both.

Abuse limits live here so both transports have them: a real-time audio budget (a token bucket
at `session_audio_rate` x real time with a `session_audio_burst_s` burst: the excess is dropped
and counted, and the client told once), the daily audio quota, the per-turn length cap, the
request rate for typed messages, and an idle timeout. `close` is idempotent and releases
exactly what was taken, so a transport calls it in one `finally` whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from common.frames import (
    AudioChunk,
    AudioIn,
    EndTurn,
    ErrorEvent,
    Frame,
    HandoffAsk,
    PlaybackMark,
    Respond,
    SessionEnd,
    SessionStart,
    TextIn,
    TranscriptChunk,
    TurnEvent,
    VadEvent,
)
from common.logs import session_var
from common.metrics import DROPPED_FRAMES, SESSIONS_ACTIVE
from common.settings import Settings
from gateway.auth import Principal
from gateway.bridge import Bridge, Connection, scoped_session_id
from gateway.errors import ApiError
from gateway.guard import Guard, rate_error
from gateway.latency import AudioClock, TurnMetrics
from gateway.limits import RateLimited
from gateway.playback import SessionClosed
from gateway.protocol import (
    CLOSE_POLICY,
    EndTurnMessage,
    HandoffMessage,
    ProtocolError,
    Start,
    TextMessage,
    check_start,
    check_text,
    event_for,
    parse_client_message,
    phrase_event,
)
from gateway.token_rate import TokenRate
from gateway.turn_length import TurnLength

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CHARGE_EVERY_S = 1.0  # audio is charged to the daily quota in steps of this much
DROPPED_FRAMES.labels("audio_too_fast")  # declared at zero: "never yet" reads as 0

Action = Callable[[], Awaitable[None]]


class TransportClosed(Exception):
    """The client's connection is gone; nothing more can be sent."""


class Transport(Protocol):
    async def send_event(self, event: dict[str, Any]) -> None:
        """One JSON event to the client (raises TransportClosed when it is gone)."""

    async def send_audio(self, pcm: bytes) -> None:
        """Reply audio, PCM16 mono 16 kHz, already paced by the Outbox."""

    async def end_audio(self) -> None:
        """A reply is complete: flush whatever the encoder holds."""

    def drop_audio(self) -> None:
        """A reply was interrupted: drop reply audio not yet played out."""

    async def after_audio(self, action: Action) -> None:
        """Run `action` once the reply audio handed over so far has gone out."""

    async def close(self, event: dict[str, Any], close_code: int) -> None:
        """Tell the client why (an error event) and end the connection."""


class AudioBudget:
    """A token bucket in seconds of audio: `rate` seconds per wall second, `burst` at most."""

    def __init__(self, rate: float, burst_s: float) -> None:
        self.rate, self.burst = rate, burst_s
        self.tokens = burst_s
        self.at = time.monotonic()

    def take(self, seconds: float) -> bool:
        if self.rate <= 0:
            return True  # unlimited
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens + 1e-9 < seconds:  # float sums of 20 ms frames fall a hair short
            return False
        self.tokens -= seconds
        return True


class VoiceSession:
    def __init__(self, bridge: Bridge, settings: Settings, guard: Guard, transport: Transport) -> None:
        self.bridge, self.settings, self.guard, self.transport = bridge, settings, guard, transport
        self.principal: Principal | None = None
        self.client_id = ""  # the id the client knows (session.started, REST history)
        self.session_id = ""  # the id on the ZeroMQ plane (scoped to its caller)
        self.language = ""
        self.connection: Connection | None = None
        self.clock = AudioClock()
        self.metrics = TurnMetrics(self.clock)
        self.token_rate = TokenRate()  # turn.metrics: tokens, tokens_per_s, v2v_ms
        self.budget = AudioBudget(settings.session_audio_rate, settings.session_audio_burst_s)
        self.told_too_fast = False
        self.frames_in = 0
        self.turn_length = TurnLength(settings.max_audio_seconds)  # the user's current turn
        self.uncharged_s = 0.0
        self.last_activity = time.monotonic()
        self._slot = False
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self.system_prompt = ""  # a transport's client may choose its own (OpenAI Realtime)
        self.silence_ms = 0  # ... and its end-of-turn silence (0: the server's)
        self.speed = 1.0  # ... and the speaking rate of the replies
        self.manual_turns = False  # ... and whether it asks for each reply itself

    # --- opening -------------------------------------------------------------------------------

    async def admit(self, token: str | None, host: str, start: Start) -> None:
        """Validate the start, authenticate, take a request token and a session slot.

        Raises ProtocolError (a bad start) or ApiError (auth, limits); `close` gives back the
        slot whatever happens after this."""
        client_id = check_start(start)
        self.principal = await self.guard.check(token, host)
        await self.guard.open_session(self.principal)
        self._slot = True
        self.client_id = client_id
        # A client-chosen id names a session in its caller's namespace only.
        self.session_id = scoped_session_id(self.principal.id, client_id) if start.session_id else client_id
        self.language = start.language or self.settings.language

    async def open(self) -> None:
        """Register with the bridge and tell the orchestrator; raises ApiError if refused."""
        assert self.principal is not None
        if self.session_id in self.bridge.connections:
            raise ApiError(409, "session_in_use", "that session_id is already connected")
        # A client-chosen id may name a stored conversation: it stays on its shard (sharded
        # gateways); a fresh server-made id may go to any ready shard.
        sticky = self.session_id != self.client_id
        if not self.bridge.ready(self.session_id, sticky=sticky)[0]:
            raise ApiError(503, "not_ready", "the assistant is starting; try again")
        self.connection = self.bridge.register(self.session_id, owner=self.principal.id,
                                               sticky=sticky)
        session_var.set(self.session_id)
        SESSIONS_ACTIVE.inc()
        await self.bridge.send(SessionStart(
            session_id=self.session_id, language=self.language, codec="pcm16",
            sample_rate=SAMPLE_RATE, principal=self.principal.id,
            system_prompt=self.system_prompt, silence_ms=self.silence_ms, speed=self.speed,
            manual_turns=self.manual_turns,
        ))
        self._tasks = [asyncio.create_task(self._send_loop(self.connection)),
                       asyncio.create_task(self._watch_idle())]

    def started_event(self, audio_out: dict[str, Any]) -> dict[str, Any]:
        return {"type": "session.started", "session_id": self.client_id, "audio_out": audio_out}

    async def close(self, reason: str = "disconnect") -> None:
        """Release whatever was taken; safe to call more than once and at any point."""
        if self._closed:
            return
        self._closed = True
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:  # closing from the send loop itself must not cut this short
                task.cancel()
        if self.connection is not None:
            SESSIONS_ACTIVE.dec()
            self.bridge.unregister(self.session_id)
            with contextlib.suppress(Exception):  # the orchestrator may be gone too
                await self.bridge.send(SessionEnd(session_id=self.session_id, reason=reason))
        if self._slot and self.principal is not None:
            self._slot = False
            await self.guard.close_session(self.principal)

    # --- client -> assistant -------------------------------------------------------------------

    async def on_message(self, text: str) -> None:
        """A JSON control message; a bad one gets an error event and the session goes on."""
        self.last_activity = time.monotonic()
        try:
            message = parse_client_message(text)
            if isinstance(message, EndTurnMessage):
                self.turn_length.closed()
                await self.bridge.send(EndTurn(session_id=self.session_id))
            elif isinstance(message, TextMessage):
                await self._on_text(message.text)
            elif isinstance(message, HandoffMessage):  # a person, please (handoff area)
                await self.bridge.send(HandoffAsk(session_id=self.session_id, reason=message.reason[:200],
                                                  principal=self.principal.id if self.principal else ""))
            else:
                raise ProtocolError("already_started", "this session has already started")
        except ProtocolError as exc:
            await self.transport.send_event(exc.event())

    async def _on_text(self, text: str, instructions: str = "") -> None:
        """A typed user turn; with `instructions` (OpenAI Realtime response.create's own) or in
        manual turns, a Respond frame carries it (the instructions for this reply only)."""
        stripped = check_text(text, self.settings.max_text_chars)
        assert self.principal is not None
        try:  # a typed turn costs a request, as a REST chat would
            await self.guard.limits.hit(self.principal.id)
        except RateLimited as exc:
            error = rate_error(exc)
            raise ProtocolError(error.code, error.message, int(exc.retry_after_header)) from None
        self.turn_length.closed()
        self.metrics.typed()
        self.token_rate.typed()
        if instructions or self.manual_turns:  # (manual: answered with the spoken words held)
            await self.bridge.send(Respond(session_id=self.session_id, text=stripped,
                                           instructions=instructions))
        else:
            await self.bridge.send(TextIn(session_id=self.session_id, text=stripped))

    async def on_audio(self, pcm: bytes) -> bool:
        """Client audio, PCM16 mono 16 kHz. False when the session must end (quota spent)."""
        self.last_activity = time.monotonic()
        try:
            await self._audio(pcm)
        except ProtocolError as exc:
            await self.transport.send_event(exc.event())
        except ApiError as exc:  # the daily audio quota is spent (or its store is down)
            retry = exc.headers.get("Retry-After")
            await self.transport.close(ProtocolError(exc.code, exc.message, int(retry) if retry else None)
                                       .event(), CLOSE_POLICY)
            return False
        return True

    async def _audio(self, pcm: bytes) -> None:
        if not pcm:
            return  # a decoder still filling its delay line
        seconds = len(pcm) / 2 / SAMPLE_RATE
        await self._charge(seconds)  # before the budget: audio sent too fast still costs quota
        if not self.budget.take(seconds):
            DROPPED_FRAMES.labels("audio_too_fast").inc()
            if not self.told_too_fast:
                self.told_too_fast = True
                raise ProtocolError("audio_too_fast", "audio arrives faster than real time; the "
                                    "excess is dropped")
            return
        self.clock.received(len(pcm))
        self.frames_in += 1
        await self.bridge.send(AudioIn(session_id=self.session_id, seq=self.frames_in, pcm=pcm))
        if self.turn_length.heard(len(pcm), manual=self.manual_turns):
            raise await self._end_long_turn()

    async def _end_long_turn(self) -> ProtocolError:
        """The user's turn ran past max_audio_seconds: end it; the error to tell them."""
        await self.bridge.send(EndTurn(session_id=self.session_id))
        return ProtocolError("audio_too_long", f"a turn may last {self.settings.max_audio_seconds:g} s;"
                             " it was ended here")

    async def _charge(self, seconds: float) -> None:
        self.uncharged_s += seconds
        if self.uncharged_s >= CHARGE_EVERY_S:
            assert self.principal is not None
            charged, self.uncharged_s = self.uncharged_s, 0.0
            await self.guard.charge_audio(self.principal, charged)

    async def _watch_idle(self) -> None:
        """A started session with no audio and no messages for the idle timeout is ended."""
        limit = self.settings.session_idle_timeout_s
        if limit <= 0:
            return
        while True:
            await asyncio.sleep(min(max(limit / 4, 0.05), 5.0))
            if time.monotonic() - self.last_activity > limit and self.connection is not None:
                self.connection.outbox.fail(SessionClosed(
                    "idle_timeout", f"no audio or messages for {limit:g} s", CLOSE_POLICY))
                return

    # --- assistant -> client -------------------------------------------------------------------

    async def _send_loop(self, connection: Connection) -> None:
        try:
            while True:
                await self._deliver(await connection.outbox.next())
        except SessionClosed as closed:
            log.warning("closing session", extra={"session_id": self.session_id, "code": closed.code})
            with contextlib.suppress(TransportClosed):
                await self.transport.close(ProtocolError(closed.code, closed.message).event(),
                                           closed.close_code)
        except TransportClosed:  # make sure the transport ends too (a no-op if it has)
            await self.transport.close(ProtocolError("transport_closed", "the client is gone").event(),
                                       CLOSE_POLICY)

    async def _deliver(self, frame: Frame) -> None:
        """Send one frame to the client; tell the orchestrator what has been heard."""
        if isinstance(frame, AudioChunk) and not frame.payload:
            if frame.is_final:  # a phrase's end marker: its audio has all gone out
                await self.transport.after_audio(self._heard(frame.turn_id, frame.text))
            return
        if isinstance(frame, ErrorEvent) and frame.fatal:  # the orchestrator ended the session
            raise SessionClosed(frame.code, frame.message, CLOSE_POLICY)  # (refused, erased...)
        if isinstance(frame, VadEvent):
            await self.on_speech_start(frame)
            if frame.event == "speech_start" and self.turn_length.speech_started(frame.at_ms):
                await self.transport.send_event((await self._end_long_turn()).event())
            return
        if isinstance(frame, TranscriptChunk) and frame.is_final:
            self.turn_length.closed()  # the ASR closed the user's turn
        self.metrics.observe(frame)
        self.token_rate.observe(frame)
        if isinstance(frame, TurnEvent) and frame.event in ("tts.end", "tts.cancel"):
            await self._end_reply(frame)
            return
        event = event_for(frame)
        if isinstance(event, bytes):
            await self.transport.send_audio(event)
        elif event is not None:
            await self.transport.send_event(event)

    async def on_speech_start(self, frame: VadEvent) -> None:
        """The ASR heard speech begin; Inzwa's own protocol has no event for it (its clients
        see the words), a transport that has one overrides this."""

    def _heard(self, turn_id: int, text: str) -> Action:
        async def action() -> None:
            await self.bridge.send(PlaybackMark(session_id=self.session_id, turn_id=turn_id, text=text))
            await self.transport.send_event(phrase_event(turn_id, text))
        return action

    async def _end_reply(self, frame: TurnEvent) -> None:
        event = event_for(frame)
        assert isinstance(event, dict)
        if frame.event == "tts.cancel":
            self.transport.drop_audio()
            await self.transport.send_event(event)
            await self.transport.send_event(self.token_rate.finish(
                frame.turn_id, self.metrics.finish(frame.turn_id, interrupted=True)))
            return
        await self.transport.end_audio()
        figures = self.token_rate.finish(frame.turn_id,
                                         self.metrics.finish(frame.turn_id, interrupted=False))

        async def ended() -> None:  # once the reply's audio has gone out, not merely queued
            await self.transport.send_event(event)
            await self.bridge.send(PlaybackMark(session_id=self.session_id, turn_id=frame.turn_id,
                                                done=True))
            await self.transport.send_event(figures)
        await self.transport.after_audio(ended)
