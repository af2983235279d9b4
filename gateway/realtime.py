"""WebSocket /v1/realtime: the OpenAI Realtime protocol on top of an Inzwa voice session.

A third transport of `VoiceSession` (after /ws/audio and WebRTC): client events become the
session's calls (audio appends -> `on_audio` at 16 kHz, commit -> EndTurn, a user text item +
response.create -> the typed-text path), and the session's events become Realtime server
events (gateway/realtime_conversation.py). Auth (`Authorization: Bearer`), the session slot,
rate limits, the audio budget and quota, idle timeout, barge-in, early reply and replay after a
worker death are the voice session's and the orchestrator's, unchanged.

What each client event maps onto, where it is not one to one (also in the README):
- manual turns (`turn_detection: null`): audio still streams to the ASR as it arrives (so the
  transcript is ready at commit); `commit` ends the turn and brings its transcript (one item,
  all its words, empty if nothing was heard); the orchestrator holds the user's words (every
  final of the turn) and the reply starts at `response.create` (a Respond frame; asked before
  the final, it waits for it). With server VAD, Inzwa answers every user turn and a `response.create` while a
  reply is under way adds nothing.
- `response.create` with nothing pending replies from the history alone (the assistant speaks
  first; a framework's generate_reply); `response.instructions` (at most 4000 characters) join
  the system prompt of that reply only. A typed user item waits for `response.create`.
- `conversation.item.create`: a user text item is answered at `response.create`; assistant
  (output_text, or an audio part's transcript) and system items join the orchestrator's history
  without a reply (HistoryAdd), as do user items a later item overtook (a framework syncing its
  chat context). System items join the system text of later replies, after the instructions.
- `conversation.item.delete`: the message leaves the history the LLM sees and the stored
  conversation (HistoryDelete, by the turn a spoken or typed item was answered in, or by the
  id of an added one); a manual turn's words not yet answered are dropped whole.
- `input_audio_buffer.clear`: the session's ASR drops the audio it has not transcribed yet
  (ClearAudio: its stream is reset, as for a barge-in), so cleared audio never becomes a
  transcript; a final the ASR had already made before the clear stands.
- `response.cancel`: the reply's unsent audio is dropped at once and its later frames ignored;
  the orchestrator stops its LLM and TTS work at once (a CancelTurn frame) and keeps in the
  history only what was marked heard (a truncate that follows adds the heard share of the
  phrase that was playing).
- `conversation.item.truncate` on the reply being played (or just cancelled): the phrases
  already played stay heard, and of the phrase playing at `audio_end_ms` the share of its words
  heard by then (by duration) is marked heard too. A server-VAD barge-in has already closed the
  turn in the orchestrator at the phrase boundary; a truncate after it is acknowledged only.
- `session.update` `instructions` (at most 4000 characters) join the session's system prompt
  below the server's own, which always comes first (as a REST chat's system messages do);
  `turn_detection.silence_duration_ms` (200..3000) is the trailing silence that ends a turn in
  the session's ASR, from its next utterance; `audio.output.speed` (0.25..1.5) the voice's own
  speaking rate for the next phrases (Piper's length_scale). Before the first turn they ride in
  the SessionStart, after it in a SessionConfig frame. `create_response` / `interrupt_response`
  false are refused (Inzwa answers every turn; speech always interrupts).
- `input_audio_buffer.speech_started` comes at the ASR's voice onset (its VadEvent), with the
  onset's place in the session's audio as `audio_start_ms`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from common.frames import (
    AudioChunk,
    CancelTurn,
    ClearAudio,
    Frame,
    HistoryAdd,
    HistoryDelete,
    PlaybackMark,
    Respond,
    SessionConfig,
    TokenChunk,
    TurnEvent,
    VadEvent,
)
from common.languages import registry as languages
from common.settings import Settings
from gateway.auth import bearer
from gateway.bridge import Bridge
from gateway.errors import ApiError
from gateway.guard import Guard
from gateway.openai_models import check_model, check_voice, own_ids
from gateway.playback import Outbox
from gateway.protocol import CLOSE_POLICY, CLOSE_TRY_AGAIN, MAX_CONTROL_CHARS, ProtocolError, Start
from gateway.realtime_config import (
    MAX_INSTRUCTIONS_CHARS,
    ConfigError,
    RealtimeConfig,
    input_decoder,
    new_id,
    output_encoder,
)
from gateway.realtime_conversation import BYTES_PER_MS, Conversation, Item
from gateway.session import Action, TransportClosed, VoiceSession

_GONE = (WebSocketDisconnect, RuntimeError, OSError)
MAX_APPEND_B64 = 15 * 1024 * 1024  # OpenAI's cap on one append's base64 audio
PIECE_BYTES = 100 * BYTES_PER_MS  # audio goes to the session in pieces of at most 100 ms


class RealtimeOutbox(Outbox):
    """The session's outbox, which also drops every later frame of a reply the client cancelled."""

    def __init__(self, sample_rate: int, lead_s: float, speed: float = 1.0) -> None:
        super().__init__(sample_rate=sample_rate, lead_s=lead_s, speed=speed)
        self.ignored: set[int] = set()

    def put(self, frame: Frame) -> None:
        if isinstance(frame, AudioChunk | TokenChunk | TurnEvent) and frame.turn_id in self.ignored:
            return
        super().put(frame)


@dataclass
class Cut:
    """Where a cancelled reply stood: the phrase being played and how much of it had gone."""

    turn_id: int
    phrase: str
    phrase_start_ms: int
    phrase_ms: int


class RealtimeTransport:
    """The voice session's events and reply audio, as Realtime server events."""

    def __init__(self, websocket: WebSocket, config: RealtimeConfig) -> None:
        self.ws = websocket
        self.config = config
        self.conversation = Conversation(config, self._send)
        self.encoder: Callable[[bytes], bytes] = output_encoder(config.output_format)

    async def _send(self, event: dict[str, Any]) -> None:
        try:
            await self.ws.send_text(orjson.dumps(event).decode())
        except _GONE as exc:
            raise TransportClosed from exc

    async def send_event(self, event: dict[str, Any]) -> None:
        await self.conversation.on_event(event)

    async def send_audio(self, pcm: bytes) -> None:
        await self.conversation.audio(pcm, self.encoder(pcm))

    async def end_audio(self) -> None:
        return None  # PCM and G.711 hold nothing back

    def drop_audio(self) -> None:
        self.encoder = output_encoder(self.config.output_format)  # no tail of the cut reply

    async def after_audio(self, action: Action) -> None:
        await action()  # a delta sent is a delta the client has (paced: about to play)

    async def close(self, event: dict[str, Any], close_code: int) -> None:
        with contextlib.suppress(Exception):
            await self.conversation.error(str(event.get("code")), str(event.get("message")))
            await self.ws.close(code=close_code, reason=str(event.get("code"))[:120])


class RealtimeVoiceSession(VoiceSession):
    """A voice session that can cut a reply short for a client that stopped playing it."""

    outbox: RealtimeOutbox | None = None
    transport: RealtimeTransport

    async def open(self) -> None:
        await super().open()
        assert self.connection is not None
        # Swapped before the send loop first runs (no await since it was created).
        self.outbox = RealtimeOutbox(self.connection.outbox.sample_rate, self.connection.outbox.lead_s,
                                     speed=self.connection.outbox.speed)
        self.connection.outbox = self.outbox

    def cancel_reply(self, turn_id: int, phrase_start_ms: int, sent_ms: int) -> Cut:
        """Drop what is left of a reply; returns the phrase that was playing (for truncate)."""
        assert self.outbox is not None
        queued, phrase = 0, ""
        for frame in self.outbox.audio:
            if isinstance(frame, AudioChunk) and frame.turn_id == turn_id:
                if frame.payload:
                    queued += len(frame.payload)
                elif frame.is_final:
                    phrase = frame.text
                    break
        self.outbox.ignored.add(turn_id)
        self.outbox.cancel(turn_id)
        self.transport.drop_audio()
        return Cut(turn_id, phrase, phrase_start_ms, sent_ms - phrase_start_ms + queued // BYTES_PER_MS)

    async def mark_heard(self, turn_id: int, text: str) -> None:
        await self.bridge.send(PlaybackMark(session_id=self.session_id, turn_id=turn_id, text=text))

    async def on_speech_start(self, frame: VadEvent) -> None:
        await self.transport.conversation.speech_started(frame.at_ms)

    async def typed(self, text: str, instructions: str) -> None:
        """A typed user turn, with this reply's own instructions if any."""
        await self._on_text(text, instructions)

    async def send(self, frame: Frame) -> None:
        frame.session_id = self.session_id
        await self.bridge.send(frame)


def heard_words(cut: Cut, audio_end_ms: int) -> str:
    """The words of the cut phrase heard by `audio_end_ms`, in proportion to its duration."""
    words = cut.phrase.split()
    heard_ms = min(max(0, audio_end_ms - cut.phrase_start_ms), cut.phrase_ms)
    if not words or cut.phrase_ms <= 0:
        return ""
    return " ".join(words[: len(words) * heard_ms // cut.phrase_ms])


def add_realtime_route(app: FastAPI, bridge: Bridge, settings: Settings, guard: Guard) -> None:
    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        await RealtimeSocket(websocket, bridge, settings, guard).run()


class RealtimeSocket:
    def __init__(self, websocket: WebSocket, bridge: Bridge, settings: Settings, guard: Guard) -> None:
        self.ws, self.settings = websocket, settings
        model = websocket.query_params.get("model") or own_ids(settings, "realtime")[0]
        self.config = RealtimeConfig(settings, model, check_voice(settings, None),
                                     websocket.query_params.get("language") or settings.language)
        self.config.beta = "realtime=v1" in (websocket.headers.get("openai-beta") or "")
        self.transport = RealtimeTransport(websocket, self.config)
        self.conversation = self.transport.conversation
        self.conversation.audio_ms = lambda: self.received_ms
        self.conversation.forget = self._forget
        self.session = RealtimeVoiceSession(bridge, settings, guard, self.transport)
        self.decoder = input_decoder(self.config.input_format)
        self.buffered_ms = 0  # audio appended since the last commit / clear
        self.received_ms = 0  # all audio appended
        self.pending: Item | None = None  # a typed user item waiting for response.create
        self.cut: Cut | None = None  # the last reply the client cancelled

    async def run(self) -> None:
        try:
            await self.ws.accept()
            check_model(self.settings, "realtime", self.config.model)
            host = self.ws.client.host if self.ws.client else ""
            await self.session.admit(bearer(self.ws.headers.get("authorization")), host,
                                     Start(language=self.config.language))
            self.config.id = f"sess_{self.session.client_id}"
            await self.conversation.emit({"type": "session.created", "session": self.config.describe()})
            await self._receive_loop()
        except ApiError as exc:
            await self.transport.close({"code": exc.code, "message": exc.message},
                                       CLOSE_TRY_AGAIN if exc.status in (429, 503) else CLOSE_POLICY)
        except (TransportClosed, *_GONE):
            pass  # the client left
        finally:
            await self.session.close()

    async def _receive_loop(self) -> None:
        while True:
            message = await self._receive()
            if message is None:
                await self.transport.close({"code": "idle_timeout", "message": "no client event for "
                                            f"{self.settings.session_idle_timeout_s:g} s"}, CLOSE_POLICY)
                return
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if not isinstance(text, str):
                await self.conversation.error("bad_message", "client events are JSON text messages")
                continue
            if not await self._on_text(text):
                return

    async def _receive(self) -> dict[str, Any] | None:
        """The next message; None when a session not yet open idles too long (its slot is
        taken at connect, and the voice session's own idle watch starts only when it opens)."""
        limit = self.settings.session_idle_timeout_s
        if self.session.connection is not None or limit <= 0:
            return dict(await self.ws.receive())
        try:
            return dict(await asyncio.wait_for(self.ws.receive(), limit))
        except TimeoutError:
            return None

    async def _on_text(self, text: str) -> bool:
        """One client event; False when the session must end."""
        limit = MAX_APPEND_B64 + MAX_CONTROL_CHARS
        try:
            event = orjson.loads(text) if len(text) <= limit else None
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            await self.conversation.error("invalid_event", "a client event is a JSON object with a type")
            return True
        handler = _HANDLERS.get(event["type"])
        if handler is None:
            await self.conversation.error("unknown_event", f"unsupported event type {event['type']!r}",
                                          param="type", event_id=event.get("event_id"))
            return True
        try:
            return await handler(self, event) is not False
        except (ConfigError, EventError) as exc:
            await self.conversation.error(getattr(exc, "code", "invalid_value"), str(exc),
                                          param=exc.param, event_id=event.get("event_id"))
            return True
        except ProtocolError as exc:
            await self.conversation.error(exc.code, exc.message, event_id=event.get("event_id"))
            return True
        except ApiError as exc:  # the assistant is not ready, or the session was refused
            await self.transport.close({"code": exc.code, "message": exc.message}, CLOSE_TRY_AGAIN)
            return False

    async def _ensure_open(self) -> None:
        """The orchestrator session starts with the first turn's input, after any session.update."""
        if self.session.connection is None:
            await self.session.open()

    # --- client events -------------------------------------------------------------------------------

    async def session_update(self, event: dict[str, Any]) -> None:
        session = event.get("session")
        if not isinstance(session, dict):
            raise EventError("session must be an object", "session")
        before = copy.copy(self.config)
        candidate = copy.copy(self.config)
        candidate.extra = {}
        # All or nothing: a field Inzwa cannot honour leaves the whole session as it was.
        candidate.apply(session, lambda voice: _voice(self.settings, voice))
        self._language(candidate.extra.pop("transcription_language", None))
        candidate.language = self.config.language  # (set by _language)
        vars(self.config).update(vars(candidate))  # (the transport and conversation share it)
        if before.input_format != self.config.input_format:
            self.decoder = input_decoder(self.config.input_format)
        if before.output_format != self.config.output_format:
            self.transport.drop_audio()
        await self._configure(before)
        await self.conversation.emit({"type": "session.updated", "session": self.config.describe()})

    async def _configure(self, before: RealtimeConfig) -> None:
        """The instructions join the session's system prompt, the silence is its ASR's end of
        turn, the speed its voice's rate: in the start frame before the first turn, in a
        SessionConfig after it."""
        config, session = self.config, self.session
        session.system_prompt, session.silence_ms = config.instructions, config.silence_ms
        session.speed, session.manual_turns = config.speed, not config.server_vad
        mine = (config.instructions, config.silence_ms, config.speed, config.server_vad)
        if mine != (before.instructions, before.silence_ms, before.speed, before.server_vad) \
                and session.connection is not None:
            await session.send(SessionConfig(system_prompt=mine[0], silence_ms=mine[1], speed=mine[2],
                                             manual_turns=not mine[3]))

    def _language(self, code: Any) -> None:
        """A transcription language chosen before the first turn becomes the session's language
        (its ASR, language pack and voice); after it, the orchestrator session has started."""
        if code is None or code == self.config.language:
            return
        if code not in ("auto", *languages.codes()):
            raise ConfigError(f"language {code!r} has no language pack; use auto or one of "
                              f"{languages.codes()}", "session.audio.input.transcription.language")
        if self.session.connection is not None:
            raise ConfigError("the language is set before the first turn",
                              "session.audio.input.transcription")
        self.config.language = self.session.language = str(code)

    async def append(self, event: dict[str, Any]) -> bool:
        audio = event.get("audio")
        if not isinstance(audio, str) or len(audio) > MAX_APPEND_B64:
            raise EventError("audio must be base64 text of at most 15 MiB", "audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise EventError("audio is not valid base64", "audio") from None
        await self._ensure_open()
        pcm = self.decoder(data)
        self.buffered_ms += len(pcm) // BYTES_PER_MS
        self.received_ms += len(pcm) // BYTES_PER_MS
        for at in range(0, len(pcm), PIECE_BYTES):
            if not await self.session.on_audio(pcm[at: at + PIECE_BYTES]):
                return False
        return True

    async def commit(self, event: dict[str, Any]) -> None:
        if self.buffered_ms < 100:
            raise EventError(f"buffer too small: {self.buffered_ms} ms of audio; commit needs at least "
                             "100 ms", None, "input_audio_buffer_commit_empty")
        self.buffered_ms = 0
        await self.session.on_message('{"type":"end_turn"}')
        await self.conversation.commit_manually()

    async def clear(self, event: dict[str, Any]) -> None:
        self.buffered_ms = 0
        self.conversation.user = None  # its words will not come: the ASR forgets that audio
        self.session.turn_length.closed()  # ... and it is no part of a turn's length either
        if self.session.connection is not None:
            await self.session.send(ClearAudio())
        await self.conversation.emit({"type": "input_audio_buffer.cleared"})

    async def item_create(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        role, text = item_text(item, self.settings.max_text_chars)
        assert isinstance(item, dict)
        added = Item(str(item.get("id") or new_id("item")), role,
                     "output_text" if role == "assistant" else "input_text", text)
        if self.conversation.find(added.id) is not None:
            raise EventError(f"item {added.id!r} already exists", "item.id")
        if self.pending is not None:  # an earlier typed item nobody asked a reply to: history
            await self._add(self.pending)
            self.pending = None
        if role == "user":
            self.pending = added  # answered at response.create
        else:
            await self._add(added)
        await self.conversation.item_added(added)

    async def _add(self, item: Item) -> None:
        """Into the orchestrator's history, without a reply."""
        await self._ensure_open()
        item.added = True
        await self.session.send(HistoryAdd(role=item.role, text=item.text, item_id=item.id))

    async def response_create(self, event: dict[str, Any]) -> None:
        instructions = response_instructions(event)
        pending, self.pending = self.pending, None
        await self._ensure_open()
        if pending is not None:  # a typed user turn
            self.conversation.echo = pending.text
            await self.session.typed(pending.text, instructions)
        elif self.conversation.response is None:  # (one under way is the reply asked for)
            # A reply from the history: to a manual turn's words, or the assistant speaks first.
            await self.session.send(Respond(instructions=instructions))

    async def response_cancel(self, event: dict[str, Any]) -> None:
        response = self.conversation.response
        if response is None:
            raise EventError("no response is in progress", None, "response_cancel_not_active")
        self.cut = self.session.cancel_reply(response.turn_id, response.phrase_start_bytes // BYTES_PER_MS,
                                             response.audio_ms)
        # The orchestrator stops the LLM and TTS now, not at the next turn.
        await self.session.bridge.send(CancelTurn(session_id=self.session.session_id,
                                                  turn_id=response.turn_id))
        await self.conversation.finish(response.turn_id, "cancelled", None, "client_cancelled")

    async def truncate(self, event: dict[str, Any]) -> None:
        item_id, end_ms = event.get("item_id"), event.get("audio_end_ms")
        item = self.conversation.find(str(item_id))
        if item is None or item.role != "assistant":
            raise EventError(f"no assistant item {item_id!r}", "item_id")
        if not isinstance(end_ms, int) or end_ms < 0:
            raise EventError("audio_end_ms must be a non-negative integer", "audio_end_ms")
        response = self.conversation.response
        if response is not None and response.item.id == item.id:
            await self.response_cancel(event)  # truncating the reply being played stops it
        if self.cut is not None:
            heard = heard_words(self.cut, end_ms)
            if heard:
                await self.session.mark_heard(self.cut.turn_id, heard)
            self.cut = None
        await self.conversation.emit({"type": "conversation.item.truncated", "item_id": item.id,
                                      "content_index": 0, "audio_end_ms": end_ms})

    async def item_delete(self, event: dict[str, Any]) -> None:
        item = self.conversation.find(str(event.get("item_id")))
        if item is None:
            raise EventError(f"no item {event.get('item_id')!r}", "item_id")
        response = self.conversation.response
        if response is not None and response.item.id == item.id:
            await self.response_cancel(event)  # the reply being played is deleted: it stops too
        self.conversation.items.remove(item)
        if item is self.pending:
            self.pending = None
        elif item.role == "user" and not item.turn_id and not item.added and self.config.server_vad:
            self.conversation.deleted.append(item)  # its turn is told when its reply begins
        elif self.session.connection is not None:
            await self._forget(item)
        await self.conversation.emit({"type": "conversation.item.deleted", "item_id": item.id})

    async def _forget(self, item: Item) -> None:
        """Out of the history the LLM sees, and out of the store."""
        await self.session.send(HistoryDelete(turn_id=item.turn_id, role=item.role,
                                              item_id=item.id if item.added else ""))


class EventError(ValueError):
    def __init__(self, message: str, param: str | None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param, self.code = param, code


_PARTS = {"user": ("input_text", "text"), "system": ("input_text", "text"),
          "assistant": ("output_text", "text", "output_audio", "audio")}


def item_text(item: Any, limit: int) -> tuple[str, str]:
    """The role and text of a message item a client adds (an assistant's audio part by its
    transcript); EventError if it is not one Inzwa can take."""
    content = item.get("content") if isinstance(item, dict) else None
    if not isinstance(item, dict) or item.get("type", "message") != "message" or \
            item.get("role") not in _PARTS or not isinstance(content, list):
        raise EventError("only message items (role user, assistant or system) with text content can "
                         "be added", "item")
    role = str(item["role"])
    text = " ".join(str(part.get("text") or part.get("transcript") or "") for part in content
                    if isinstance(part, dict) and part.get("type") in _PARTS[role]).strip()
    if not text:
        raise EventError(f"the message has no {_PARTS[role][0]}", "item.content")
    if len(text) > limit:
        raise EventError(f"text of {len(text)} characters > {limit}", "item.content")
    return role, text


def response_instructions(event: dict[str, Any]) -> str:
    """response.create's own instructions (for that reply only); "" if none."""
    response = event.get("response")
    if response is None:
        return ""
    if not isinstance(response, dict):
        raise EventError("response must be an object", "response")
    # Every reply is a turn of the session's one conversation (Inzwa has no out-of-band replies).
    if response.get("conversation", "auto") not in ("auto", None):
        raise EventError("only replies in the session's conversation are supported (conversation: "
                         "auto)", "response.conversation")
    if response.get("input") is not None:
        raise EventError("a reply's own input items are not supported: it answers the conversation",
                         "response.input")
    instructions = response.get("instructions") or ""
    if not isinstance(instructions, str) or len(instructions) > MAX_INSTRUCTIONS_CHARS:
        raise EventError(f"response.instructions must be text of at most {MAX_INSTRUCTIONS_CHARS} "
                         "characters", "response.instructions")
    return instructions.strip()


def _voice(settings: Settings, voice: Any) -> str:
    try:
        return check_voice(settings, voice if isinstance(voice, str) else None)
    except ApiError as exc:
        raise ConfigError(exc.message, "session.audio.output.voice") from None


_HANDLERS: dict[str, Callable[[RealtimeSocket, dict[str, Any]], Any]] = {
    "session.update": RealtimeSocket.session_update,
    "input_audio_buffer.append": RealtimeSocket.append,
    "input_audio_buffer.commit": RealtimeSocket.commit,
    "input_audio_buffer.clear": RealtimeSocket.clear,
    "conversation.item.create": RealtimeSocket.item_create,
    "conversation.item.truncate": RealtimeSocket.truncate,
    "conversation.item.delete": RealtimeSocket.item_delete,
    "response.create": RealtimeSocket.response_create,
    "response.cancel": RealtimeSocket.response_cancel,
}
