"""Inzwa's voice-session events, told as OpenAI Realtime server events.

The voice session (gateway/session.py) emits its own protocol's events: `asr.partial` /
`asr.final` for the user's words, `llm.partial` tokens, `tts.start`, reply audio, `tts.phrase`
(a phrase has gone out), `tts.end` / `tts.cancel`. `Conversation` turns them into the
Realtime story: speech_started -> transcription deltas -> speech_stopped / committed / the user
item / transcription completed, then response.created -> output item -> audio and transcript
deltas -> the done events -> response.done (`completed` or `cancelled`).

It also keeps the conversation's items (ids, order, text) for previous_item_id, delete and
truncate. The dialogue history proper stays in the orchestrator.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.realtime_config import RealtimeConfig, beta_name, new_id

Emit = Callable[[dict[str, Any]], Awaitable[None]]
BYTES_PER_MS = 32  # PCM16 16 kHz: what the session hands the transport


@dataclass
class Item:
    id: str
    role: str
    kind: str  # "input_audio" | "input_text" | "output_audio" | "output_text"
    text: str = ""
    # Its message in the orchestrator's history, for delete: the turn whose user or assistant
    # message it is, or, added with HistoryAdd, its own id (`added`); 0 and not added: not yet.
    turn_id: int = 0
    added: bool = False

    def body(self, status: str = "completed") -> dict[str, Any]:
        content: dict[str, Any] = {"type": self.kind}
        if self.kind in ("input_text", "output_text"):
            content["text"] = self.text
        else:
            content["transcript"] = self.text or None
        return {"id": self.id, "object": "realtime.item", "type": "message", "status": status,
                "role": self.role, "content": [content]}


@dataclass
class Response:
    id: str
    turn_id: int
    item: Item
    audio_bytes: int = 0  # reply audio sent so far (16 kHz PCM16, before encoding)
    phrase_start_bytes: int = 0  # where the phrase being played began
    tokens: list[str] = field(default_factory=list)

    @property
    def audio_ms(self) -> int:
        return self.audio_bytes // BYTES_PER_MS


class Conversation:
    def __init__(self, config: RealtimeConfig, emit: Emit) -> None:
        self.config = config
        self._emit = emit
        self.items: list[Item] = []
        self.response: Response | None = None
        self.user: Item | None = None  # the user's audio item being spoken
        self._partial = ""
        self.echo: str | None = None  # a typed turn's text: its echoed final is not new speech
        self.typed = False  # that echo came: the cancel that follows is the typed turn's, not speech
        self.audio_ms: Callable[[], int] = lambda: 0  # client audio received so far
        self.committed_manually = False
        # User items deleted before the reply that answers them began (so before they had a
        # turn): `forget` is told their turn when it does.
        self.deleted: list[Item] = []
        self.forget: Callable[[Item], Awaitable[None]] | None = None

    async def emit(self, event: dict[str, Any]) -> None:
        name = beta_name(event["type"], self.config.beta)
        if name:
            await self._emit({**event, "type": name, "event_id": new_id("event")})

    def add_item(self, item: Item) -> str | None:
        previous = self.items[-1].id if self.items else None
        self.items.append(item)
        return previous

    async def item_added(self, item: Item) -> None:
        previous = self.add_item(item)
        await self.emit({"type": "conversation.item.added", "previous_item_id": previous,
                         "item": item.body()})
        await self.emit({"type": "conversation.item.done", "previous_item_id": previous,
                         "item": item.body()})

    def find(self, item_id: str) -> Item | None:
        return next((item for item in self.items if item.id == item_id), None)

    # --- the user's side ---------------------------------------------------------------------------

    async def on_event(self, event: dict[str, Any]) -> None:
        """One Inzwa event (a dict from the voice session)."""
        kind = event.get("type")
        if kind == "asr.partial":
            await self._partial_words(event)
        elif kind == "asr.final":
            await self._final_words(event)
        elif kind == "llm.partial":
            response = await self.respond(int(event.get("turn_id", 0)))
            if response is not None and event.get("token"):
                response.tokens.append(str(event["token"]))
                await self.emit(self._part(response, "response.output_audio_transcript.delta",
                                           delta=str(event["token"])))
        elif kind == "tts.start":
            await self.respond(int(event.get("turn_id", 0)))
        elif kind == "tts.phrase":
            if self.response is not None and self.response.turn_id == event.get("turn_id"):
                self.response.phrase_start_bytes = self.response.audio_bytes
        elif kind == "tts.end":
            await self.finish(int(event.get("turn_id", 0)), "completed", str(event.get("text", "")))
        elif kind == "tts.cancel":
            await self._barge_in()
            await self.finish(int(event.get("turn_id", 0)), "cancelled", None, "turn_detected")
        elif kind == "error":
            await self.error(str(event.get("code")), str(event.get("message")), kind="server_error")

    async def _barge_in(self) -> None:
        """The orchestrator cut a reply because the ASR heard speech begin (its voice activity
        stays inside the orchestrator): that is the moment of speech_started, before any words."""
        typed, self.typed = self.typed, False
        if typed or self.user is not None or not self.config.server_vad:
            return
        self.user, self._partial = Item(new_id("item"), "user", "input_audio"), ""
        await self.emit({"type": "input_audio_buffer.speech_started", "item_id": self.user.id,
                         "audio_start_ms": self.audio_ms()})

    async def speech_started(self, at_ms: int) -> None:
        """The ASR heard speech begin (its VAD onset, before any words): a new user item."""
        if self.user is not None or not self.config.server_vad:
            return
        self.user, self._partial = Item(new_id("item"), "user", "input_audio"), ""
        await self.emit({"type": "input_audio_buffer.speech_started", "item_id": self.user.id,
                         "audio_start_ms": at_ms})

    async def _partial_words(self, event: dict[str, Any]) -> None:
        text = str(event.get("text", ""))
        if self.user is None:
            self.user = Item(new_id("item"), "user", "input_audio")
            self._partial = ""
            if self.config.server_vad:
                await self.emit({"type": "input_audio_buffer.speech_started", "item_id": self.user.id,
                                 "audio_start_ms": int(event.get("start_ms", 0))})
        if self.config.transcription and text.startswith(self._partial) and len(text) > len(self._partial):
            delta, self._partial = text[len(self._partial):], text
            await self.emit({"type": "conversation.item.input_audio_transcription.delta",
                             "item_id": self.user.id, "content_index": 0, "delta": delta})

    async def _final_words(self, event: dict[str, Any]) -> None:
        text = str(event.get("text", ""))
        if self.echo is not None and text.strip() == self.echo:
            self.echo, self.typed = None, True  # the typed item already stands in the conversation
            return
        item = self.user or Item(new_id("item"), "user", "input_audio")
        text = " ".join(part for part in (item.text, text.strip()) if part)
        if not self.config.server_vad and not self.committed_manually:
            # Manual turns: the ASR ended an utterance within the turn (a pause); the turn is
            # the client's to end, in one item with all its words (as the orchestrator holds them).
            self.user, self._partial, item.text = item, "", text
            return
        self.user, self._partial, item.text = None, "", text
        if not self.committed_manually:
            if self.config.server_vad:
                await self.emit({"type": "input_audio_buffer.speech_stopped", "item_id": item.id,
                                 "audio_end_ms": int(event.get("end_ms", 0))})
            await self.commit(item)
        self.committed_manually = False
        if self.config.transcription:
            await self.emit({"type": "conversation.item.input_audio_transcription.completed",
                             "item_id": item.id, "content_index": 0, "transcript": text,
                             "usage": {"type": "duration", "seconds": 0}})

    async def commit(self, item: Item) -> None:
        previous = self.add_item(item)
        await self.emit({"type": "input_audio_buffer.committed", "previous_item_id": previous,
                         "item_id": item.id})
        await self.emit({"type": "conversation.item.added", "previous_item_id": previous,
                         "item": item.body("in_progress" if not item.text else "completed")})

    async def commit_manually(self) -> None:
        """The client's commit (manual turns): the item exists now, its transcript comes later."""
        self.user = self.user or Item(new_id("item"), "user", "input_audio")
        self.committed_manually = True
        await self.commit(self.user)

    # --- the assistant's side ----------------------------------------------------------------------

    async def respond(self, turn_id: int) -> Response | None:
        """The response for a reply turn, announcing it the first time it is seen."""
        current = self.response
        if current is not None and current.turn_id == turn_id:
            return current
        if current is not None:  # superseded without a word from the orchestrator
            await self.finish(current.turn_id, "cancelled", None, "turn_detected")
        self.typed = False  # the typed turn's reply has begun: a later cancel is someone speaking
        self._link(turn_id)
        deleted, self.deleted = self.deleted, []
        for gone in deleted:  # (given this turn by _link)
            if self.forget is not None:
                await self.forget(gone)
        item = Item(new_id("item"), "assistant", "output_audio", turn_id=turn_id)
        response = self.response = Response(new_id("resp"), turn_id, item)
        await self.emit({"type": "response.created",
                         "response": self._response_body(response, "in_progress")})
        previous = self.add_item(item)
        await self.emit({"type": "conversation.item.added", "previous_item_id": previous,
                         "item": item.body("in_progress")})
        await self.emit({"type": "response.output_item.added", "response_id": response.id,
                         "output_index": 0, "item": item.body("in_progress")})
        await self.emit(self._part(response, "response.content_part.added",
                                   part={"type": "audio", "transcript": ""}))
        return response

    def _link(self, turn_id: int) -> None:
        """The user items since the last reply are that turn's question (its user message)."""
        for item in self.deleted:
            item.turn_id = turn_id
        for item in reversed(self.items):
            if item.role == "assistant" and not item.added:
                return
            if item.role == "user" and not item.turn_id and not item.added:
                item.turn_id = turn_id

    async def audio(self, pcm: bytes, encoded: bytes) -> None:
        response = self.response
        if response is None or not encoded:
            return
        response.audio_bytes += len(pcm)
        await self.emit(self._part(response, "response.output_audio.delta",
                                   delta=base64.b64encode(encoded).decode("ascii")))

    async def finish(self, turn_id: int, status: str, text: str | None, reason: str = "") -> None:
        response = self.response
        if response is None or response.turn_id != turn_id:
            return
        self.response = None
        transcript = text if text is not None else "".join(response.tokens)
        response.item.text = transcript.strip()
        await self.emit(self._part(response, "response.output_audio.done"))
        await self.emit(self._part(response, "response.output_audio_transcript.done",
                                   transcript=response.item.text))
        await self.emit(self._part(response, "response.content_part.done",
                                   part={"type": "audio", "transcript": response.item.text}))
        item_status = "completed" if status == "completed" else "incomplete"
        await self.emit({"type": "response.output_item.done", "response_id": response.id,
                         "output_index": 0, "item": response.item.body(item_status)})
        await self.emit({"type": "conversation.item.done", "item": response.item.body(item_status)})
        body = self._response_body(response, status)
        if reason:
            body["status_details"] = {"type": status, "reason": reason}
        await self.emit({"type": "response.done", "response": body})

    def _response_body(self, response: Response, status: str) -> dict[str, Any]:
        output = [] if status == "in_progress" else [response.item.body(
            "completed" if status == "completed" else "incomplete")]
        return {"id": response.id, "object": "realtime.response", "status": status,
                "status_details": None, "output": output,
                "output_modalities": ["audio"], "usage": None,
                "audio": {"output": {"format": {"type": "audio/pcm"}, "voice": self.config.voice}}}

    @staticmethod
    def _part(response: Response, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "response_id": response.id, "item_id": response.item.id,
                "output_index": 0, "content_index": 0, **fields}

    async def error(self, code: str, message: str, *, param: str | None = None,
                    event_id: str | None = None, kind: str = "invalid_request_error") -> None:
        await self.emit({"type": "error", "error": {"type": kind, "code": code, "message": message,
                                                    "param": param, "event_id": event_id}})
