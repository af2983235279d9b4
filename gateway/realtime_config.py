"""The OpenAI Realtime session's settings: audio formats, turn detection, transcription, voice.

Both shapes of `session.update` are read: the GA one (`session.audio.input.format =
{"type": "audio/pcm", "rate": 24000}`, `session.audio.input.turn_detection`, ...) and the beta
one (`input_audio_format: "pcm16" | "g711_ulaw" | "g711_alaw"`, `turn_detection`,
`input_audio_transcription`). A client that speaks the beta shape (or connects with the
`OpenAI-Beta: realtime=v1` header) gets the beta event names back (see `beta_name`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.audio import SAMPLE_RATE
from common.settings import Settings
from gateway.media import G711_RATE, StreamResampler, g711_decode, g711_encode

PCM_RATE = 24000  # OpenAI Realtime's PCM16 is 24 kHz mono
# The session's own system prompt rides in every LLM turn's prompt: bounded so that it leaves
# the small local models' context (4096 tokens) room for the dialogue.
MAX_INSTRUCTIONS_CHARS = 4000
# End-of-turn silence a client may choose: below 200 ms turns end inside words (webrtcvad's own
# hangover is ~80 ms); above 3 s the assistant seems not to answer at all.
SILENCE_RANGE_MS = (200, 3000)
SPEED_RANGE = (0.25, 1.5)  # OpenAI Realtime's output speed range (the voice's own rate: Piper)
_GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}
_BETA_FORMATS = {"pcm16": "pcm16", "g711_ulaw": "pcmu", "g711_alaw": "pcma"}
_LAW = {"pcmu": "ulaw", "pcma": "alaw"}
_BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
}


class ConfigError(ValueError):
    """A session.update Inzwa cannot honour; the message says which field and why."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:22]}"


def beta_name(name: str, beta: bool) -> str:
    if not beta:
        return name
    if name == "conversation.item.done":
        return ""  # the beta protocol has no such event
    return _BETA_NAMES.get(name, name)


def parse_format(value: Any, param: str) -> str:
    """A format as "pcm16" | "pcmu" | "pcma" from either shape."""
    if isinstance(value, str) and value in _BETA_FORMATS:
        return _BETA_FORMATS[value]
    if isinstance(value, dict) and value.get("type") in _GA_FORMATS:
        kind = _GA_FORMATS[value["type"]]
        if kind == "pcm16" and value.get("rate", PCM_RATE) != PCM_RATE:
            raise ConfigError("audio/pcm is 24000 Hz only", param)
        return kind
    raise ConfigError(f"unsupported audio format {value!r}: use audio/pcm (24 kHz), audio/pcmu or "
                      "audio/pcma", param)


def rate_of(kind: str) -> int:
    return PCM_RATE if kind == "pcm16" else G711_RATE


def input_decoder(kind: str) -> Callable[[bytes], bytes]:
    """Client audio in `kind` -> PCM16 16 kHz (one resampler per connection: no edge clicks)."""
    resample = StreamResampler(rate_of(kind), SAMPLE_RATE)
    if kind == "pcm16":
        return resample
    law = _LAW[kind]
    return lambda data: resample(g711_decode(data, law))


def output_encoder(kind: str) -> Callable[[bytes], bytes]:
    """Reply audio PCM16 16 kHz -> `kind` at its rate."""
    resample = StreamResampler(SAMPLE_RATE, rate_of(kind))
    if kind == "pcm16":
        return resample
    law = _LAW[kind]
    return lambda pcm: g711_encode(resample(pcm), law)


def _format_body(kind: str, beta: bool) -> Any:
    if beta:
        return {v: k for k, v in _BETA_FORMATS.items()}[kind]
    body: dict[str, Any] = {"type": {v: k for k, v in _GA_FORMATS.items()}[kind]}
    if kind == "pcm16":
        body["rate"] = PCM_RATE
    return body


def _instructions(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError("instructions must be a string", "session.instructions")
    if len(value) > MAX_INSTRUCTIONS_CHARS:
        raise ConfigError(f"instructions of {len(value)} characters > {MAX_INSTRUCTIONS_CHARS}",
                          "session.instructions")
    return value.strip()


def _silence(value: Any) -> int:
    low, high = SILENCE_RANGE_MS
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"silence_duration_ms must be an integer from {low} to {high}",
                          "session.audio.input.turn_detection.silence_duration_ms")
    return value


def _speed(value: Any) -> float:
    low, high = SPEED_RANGE
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"speed must be a number from {low} to {high}", "session.audio.output.speed")
    return float(value)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass
class RealtimeConfig:
    settings: Settings
    model: str
    voice: str
    language: str
    id: str = ""
    instructions: str = ""
    input_format: str = "pcm16"
    output_format: str = "pcm16"
    server_vad: bool = True
    silence_ms: int = 0  # the client's turn_detection.silence_duration_ms; 0: the server's
    speed: float = 1.0  # the replies' speaking rate (audio.output.speed)
    transcription: bool = True
    beta: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def apply(self, session: dict[str, Any], voices: Callable[[str | None], str]) -> None:
        """Apply a session.update's `session` (either shape); ConfigError for what cannot be."""
        if "input_audio_format" in session or "turn_detection" in session or \
                "input_audio_transcription" in session:
            self.beta = True
        audio = _object(session.get("audio"))
        inp, out = _object(audio.get("input")), _object(audio.get("output"))
        if "instructions" in session:
            self.instructions = _instructions(session["instructions"])
        for source, key, param in ((inp, "format", "session.audio.input.format"),
                                   (session, "input_audio_format", "session.input_audio_format")):
            if key in source:
                self.input_format = parse_format(source[key], param)
        for source, key, param in ((out, "format", "session.audio.output.format"),
                                   (session, "output_audio_format", "session.output_audio_format")):
            if key in source:
                self.output_format = parse_format(source[key], param)
        for source in (out, session):
            if "voice" in source:
                self.voice = voices(source["voice"])
            if "speed" in source:
                self.speed = _speed(source["speed"])
        self._turns(inp, session)

    def _turns(self, inp: dict[str, Any], session: dict[str, Any]) -> None:
        for source in (inp, session):
            if "turn_detection" in source:
                self._detection(source["turn_detection"])
        for source, key in ((inp, "transcription"), (session, "input_audio_transcription")):
            if key in source:
                transcription = source[key]
                self.transcription = transcription is not None
                language = transcription.get("language") if isinstance(transcription, dict) else None
                if language:
                    self.extra["transcription_language"] = language

    def _detection(self, detection: Any) -> None:
        if detection is None:
            self.server_vad = False  # manual turns
            return
        if not isinstance(detection, dict) or detection.get("type", "server_vad") != "server_vad":
            raise ConfigError("turn_detection must be server_vad or null", "session.turn_detection")
        for key in ("create_response", "interrupt_response"):  # Inzwa always does both
            if detection.get(key) is False:
                raise ConfigError(f"{key} false is not supported: Inzwa answers every turn and "
                                  "speech always interrupts a reply", f"session.turn_detection.{key}")
        if "silence_duration_ms" in detection:
            self.silence_ms = _silence(detection["silence_duration_ms"])
        self.server_vad = True

    def describe(self) -> dict[str, Any]:
        """The session object of session.created / session.updated, in the client's shape."""
        s = self.settings
        detection = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                     "silence_duration_ms": self.silence_ms or s.vad_silence_ms, "create_response": True,
                     "interrupt_response": True} if self.server_vad else None
        transcription = {"model": s.asr_model.rstrip("/").rsplit("/", 1)[-1],
                         "language": self.language} if self.transcription else None
        if self.beta:
            return {"id": self.id, "object": "realtime.session", "model": self.model,
                    "modalities": ["audio", "text"], "instructions": self.instructions,
                    "voice": self.voice, "input_audio_format": _format_body(self.input_format, True),
                    "output_audio_format": _format_body(self.output_format, True),
                    "turn_detection": detection, "input_audio_transcription": transcription}
        return {"type": "realtime", "object": "realtime.session", "id": self.id, "model": self.model,
                "output_modalities": ["audio"], "instructions": self.instructions,
                "audio": {"input": {"format": _format_body(self.input_format, False),
                                    "transcription": transcription, "turn_detection": detection},
                          "output": {"format": _format_body(self.output_format, False),
                                     "voice": self.voice, "speed": self.speed}}}
