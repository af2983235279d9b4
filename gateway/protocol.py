"""The voice protocol: client control messages in, server events out.

Shared by the WebSocket `/ws/audio` and the WebRTC data channel "events". Client text messages
are JSON objects tagged by "type" and decoded by one typed decoder, so a malformed or unknown
message becomes a precise error instead of a crash. On the WebSocket, binary messages are PCM16
LE mono audio at 16 kHz, or (a session started with codec "opus") one Opus packet each; over
WebRTC the audio travels on the media track instead.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import msgspec

from common.frames import (
    AudioChunk,
    ErrorEvent,
    Frame,
    HandoffEvent,
    TokenChunk,
    TranscriptChunk,
    TurnEvent,
)
from common.languages import registry as languages
from gateway.security import check_control_depth

# Input sample rate per codec: PCM16 is the ASR's 16 kHz; Opus always runs on a 48 kHz clock.
SUPPORTED_RATES = {"pcm16": (16000,), "opus": (48000,)}
SUPPORTED_CODECS = tuple(SUPPORTED_RATES)
MAX_OPUS_PACKET = 1275  # bytes: the largest packet RFC 6716 allows
MAX_CONTROL_CHARS = 4096  # a control message is a small JSON object; anything bigger is refused

# WebSocket close codes (RFC 6455 and IANA registry)
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013


class Start(msgspec.Struct, tag="start", tag_field="type"):
    session_id: str = ""
    auth_token: str = ""
    codec: str = "pcm16"
    sample_rate: int = 16000
    language: str = ""


class EndTurnMessage(msgspec.Struct, tag="end_turn", tag_field="type"):
    pass


class TextMessage(msgspec.Struct, tag="text", tag_field="type"):
    """A typed user turn, answered with speech like a spoken one."""

    text: str = ""


class HandoffMessage(msgspec.Struct, tag="handoff", tag_field="type"):
    """The caller asks for a person (handoff area, issue 14): `handoff.started` follows."""

    reason: str = ""


ClientMessage = Start | EndTurnMessage | TextMessage | HandoffMessage
_client_decoder = msgspec.json.Decoder(ClientMessage)


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    def event(self) -> dict[str, Any]:
        return error_event(self.code, self.message, self.retry_after_s)


def error_event(code: str, message: str, retry_after_s: int | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if retry_after_s is not None:
        event["retry_after_s"] = retry_after_s
    return event


def parse_client_message(text: str) -> ClientMessage:
    if len(text) > MAX_CONTROL_CHARS:
        raise ProtocolError("message_too_large",
                            f"control message of {len(text)} characters > {MAX_CONTROL_CHARS}")
    check_control_depth(text)  # msgspec recurses per level: a deep nest must not crash it
    try:
        return _client_decoder.decode(text)
    except RecursionError:
        raise ProtocolError("bad_message", "control message nests too deeply") from None
    except msgspec.ValidationError as exc:
        raise ProtocolError("bad_message", f"invalid control message: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError("bad_json", f"control message is not valid JSON: {exc}") from None


def check_start(start: Start) -> str:
    """Validate a start message; returns the session id to use."""
    if start.codec not in SUPPORTED_CODECS:
        raise ProtocolError("unsupported_codec",
                            f"codec {start.codec!r} is not supported; use one of {SUPPORTED_CODECS}")
    if start.language not in ("", "auto", *languages.codes()):
        raise ProtocolError(
            "unsupported_language",
            f"language {start.language!r} has no language pack; use auto or one of {languages.codes()}",
        )
    rates = SUPPORTED_RATES[start.codec]
    if start.sample_rate not in rates:
        raise ProtocolError(
            "unsupported_sample_rate",
            f"sample_rate {start.sample_rate} is not supported with {start.codec}; use {rates[0]}",
        )
    if not start.session_id:
        return str(uuid.uuid4())
    try:
        return str(uuid.UUID(start.session_id))
    except ValueError:
        raise ProtocolError("bad_session_id", "session_id must be a UUID") from None


def check_text(text: str, max_chars: int) -> str:
    """A typed message's text, stripped; refused when empty or longer than `max_chars`."""
    stripped = text.strip()
    if not stripped:
        raise ProtocolError("empty_text", "the text message has nothing to say")
    if len(stripped) > max_chars:
        raise ProtocolError("text_too_long", f"text of {len(stripped)} characters > {max_chars}")
    return stripped


def check_audio(data: bytes, max_bytes: int) -> None:
    if not data:
        raise ProtocolError("empty_frame", "binary audio frame is empty")
    if len(data) % 2:
        raise ProtocolError("odd_frame", "PCM16 frame has an odd number of bytes")
    if len(data) > max_bytes:
        raise ProtocolError("frame_too_large", f"audio frame of {len(data)} bytes > {max_bytes}")


def event_for(frame: Frame) -> dict[str, Any] | bytes | None:
    """What the client is sent for an egress frame: a JSON event or raw audio bytes."""
    match frame:
        case TranscriptChunk():
            kind: Literal["asr.final", "asr.partial"] = (
                "asr.final" if frame.is_final else "asr.partial"
            )
            return {
                "type": kind, "turn_id": frame.turn_id, "text": frame.text,
                "start_ms": frame.start_ms, "end_ms": frame.end_ms,
                "conf": round(frame.confidence, 3), "language": frame.language,
            }
        case TokenChunk():
            return {"type": "llm.partial", "turn_id": frame.turn_id, "seq": frame.seq,
                    "token": frame.token}
        case AudioChunk():
            return frame.payload  # a phrase's end marker (no payload) is handled by the session
        case TurnEvent():
            event: dict[str, Any] = {"type": frame.event, "turn_id": frame.turn_id}
            if frame.text:
                event["text"] = frame.text
            return event
        case ErrorEvent():
            return error_event(frame.code, frame.message)
        case HandoffEvent():  # handoff.started / .accepted / .ended, with why
            return {"type": frame.event, "reason": frame.reason}
    return None


def phrase_event(turn_id: int, text: str) -> dict[str, Any]:
    """A phrase's audio has all gone to the client: what the person has heard so far."""
    return {"type": "tts.phrase", "turn_id": turn_id, "text": text}
