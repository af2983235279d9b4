"""Every message that crosses a ZeroMQ socket, as one msgspec tagged union.

Structs are array-like (compact, positional) with tags, so fields are only ever appended and
every new field has a default. Each socket decodes with one typed decoder for the union of the
messages it may carry (see the `*Message` aliases at the bottom).
"""

from __future__ import annotations

import time
from typing import Any, Literal, TypedDict, TypeGuard

import msgspec

# --- the wire vocabulary: one definition of each closed set of values ----------------------------
# A frame whose field holds a value outside its Literal does not decode: the socket's reader drops
# it (and logs), so handlers only ever see these values.

WorkerKind = Literal["asr", "llm", "tts"]
WORKER_KINDS: tuple[WorkerKind, ...] = ("asr", "llm", "tts")
Role = Literal["gateway", "orchestrator", "worker", "watchdog"]  # identities on the plane
ChatRole = Literal["system", "user", "assistant"]
Codec = Literal["pcm16", "opus"]
VadEventName = Literal["speech_start", "speech_resume", "progress"]
TurnEventName = Literal["tts.start", "tts.end", "tts.cancel"]
AdminAction = Literal["models", "warmup"]


def is_worker_kind(value: str) -> TypeGuard[WorkerKind]:
    return value in WORKER_KINDS


def now_ns() -> int:
    return time.monotonic_ns()


class ChatMessage(msgspec.Struct, array_like=True, gc=False):
    role: ChatRole
    content: str


class Frame(msgspec.Struct, tag=True, array_like=True, omit_defaults=True, gc=False):
    """The envelope every frame carries.

    `request_id` names the piece of work a result belongs to (one LLM generation, one TTS phrase)
    so results can be matched, deduplicated and replayed.
    """

    session_id: str = ""
    turn_id: int = 0
    seq: int = 0
    ts_ns: int = 0
    request_id: str = ""


class Envelope(TypedDict):
    session_id: str
    turn_id: int
    request_id: str


def reply_envelope(request: Frame) -> Envelope:
    """The envelope of an answer to `request`: same session, turn and request id, so the asker
    matches it (`Frame(**reply_envelope(request), ...)`)."""
    return {"session_id": request.session_id, "turn_id": request.turn_id,
            "request_id": request.request_id}


# --- the seed's data chunks -------------------------------------------------------------------


class TranscriptChunk(Frame):
    text: str = ""
    is_final: bool = False
    start_ms: int = 0
    end_ms: int = 0
    confidence: float = 0.0
    language: str = ""
    instance_id: str = ""  # the ASR instance that heard it (older workers put it in request_id)


class TokenChunk(Frame):
    token: str = ""
    logprob: float | None = None
    is_final: bool = False
    # ms from the generation request's arrival at the LLM worker to this token leaving the
    # engine: the generation's own clock, so a token rate read downstream is not skewed by the
    # plane's queues (None: not generated, e.g. a fallback line, or an older worker)
    elapsed_ms: float | None = None


class AudioChunk(Frame):
    format: Literal["opus", "pcm16"] = "pcm16"
    sample_rate: int = 16000
    payload: bytes = b""
    is_final: bool = False  # last chunk of its request (a phrase)
    text: str = ""  # the phrase this audio speaks (on the final chunk)


# --- gateway -> orchestrator (ingress) -----------------------------------------------------------


class SessionStart(Frame):
    reply_to: str = ""  # unused (kept for wire compatibility): answers go to gateway_id's egress
    language: str = ""
    codec: Codec = "pcm16"
    sample_rate: int = 16000
    offset_ms: int = 0  # where the audio that follows sits in the session (replay to a new ASR)
    pcm: bytes = b""  # audio to take first (a replay), in the same message so nothing overtakes it
    principal: str = ""  # who opened it (the gateway's authenticated caller): sessions are theirs
    gateway_id: str = ""  # the gateway that holds the client connection
    # The client's own choices (OpenAI Realtime session.update); empty / 0: the server's settings.
    system_prompt: str = ""  # the system prompt of this session's LLM turns
    silence_ms: int = 0  # the trailing silence that ends a turn in this session's ASR (VAD)
    speed: float = 1.0  # the speaking rate of this session's replies (SynthesizeRequest.speed)
    # Manual turns (OpenAI Realtime turn_detection null): a user turn is answered only when the
    # client asks (a Respond frame); its words wait in the orchestrator until then.
    manual_turns: bool = False


class AudioIn(Frame):
    """Client PCM16 mono audio at 16 kHz; `seq` counts frames within the session."""

    pcm: bytes = b""


class EndTurn(Frame):
    """The client says the user turn is over (push-to-talk)."""


class TextIn(Frame):
    """A typed user message (WebSocket/WebRTC `{"type":"text"}`): a whole user turn, as if the
    ASR had heard it, with the same safety filter and limits as speech."""

    text: str = ""
    # A transcript the gateway had transcribed itself (POST /v1/turns, the job API): the ASR's
    # confidence, stored with the turn as for speech. None: really typed.
    confidence: float | None = None


class SessionEnd(Frame):
    reason: str = ""


class SessionConfig(Frame):
    """A live session's client-chosen settings changed (OpenAI Realtime `session.update` after
    the session started): the orchestrator keeps the prompt for the next turns and hands the
    silence to the session's ASR. Empty / 0: back to the server's settings."""

    system_prompt: str = ""
    silence_ms: int = 0
    speed: float = 1.0
    manual_turns: bool = False  # (as SessionStart's)
    # Set by the orchestrator only (overload ladder, orchestrator/overload.py): False asks the
    # session's ASR for no partials from now on (finals and pause hypotheses go on).
    partials: bool = True


class CancelTurn(Frame):
    """The client stopped the reply of `turn_id` (OpenAI Realtime `response.cancel`): its LLM
    and TTS work stop now, and the history keeps only what was marked heard."""


class HistoryAdd(Frame):
    """A message joins the session's dialogue history without a reply (OpenAI Realtime
    `conversation.item.create` of an assistant, system or extra user item: frameworks sync their
    chat context this way). `item_id` is the gateway's name for it, for a later HistoryDelete."""

    role: str = ""  # "user" | "assistant" | "system"
    text: str = ""
    item_id: str = ""


class HistoryDelete(Frame):
    """A message leaves the dialogue history the LLM sees, and the stored one (OpenAI Realtime
    `conversation.item.delete`): the `role` message of turn `turn_id`, or the one HistoryAdd
    named `item_id`; turn 0 with role "user": the user's words held for a reply not yet asked."""

    role: str = ""
    item_id: str = ""


class Respond(Frame):
    """Reply now (OpenAI Realtime `response.create`): to `text` (a typed user item) and the user's
    words held in manual turns, or, with none, from the history alone (the assistant speaks
    first). `instructions` join the system prompt of this one reply."""

    text: str = ""
    instructions: str = ""


class ClearAudio(Frame):
    """The client took back the audio it sent since its last commit (OpenAI Realtime
    `input_audio_buffer.clear`): the session's ASR drops what it has not transcribed yet."""


class PlaybackMark(Frame):
    """The gateway has sent the client a phrase's last audio (`text`), or, with `done`, all of
    the turn's audio: what the person has heard, for the dialogue history."""

    text: str = ""
    done: bool = False


class HistoryRequest(Frame):
    """Ask for a session's dialogue history (REST `GET /v1/sessions/{id}`). Answered only to the
    gateway holding the session, or, with `admin`, to any authenticated gateway."""

    reply_to: str = ""  # unused (wire compatibility)
    gateway_id: str = ""  # the asking gateway (checked against its key under CURVE)
    admin: bool = False  # the caller is an admin (the gateway checked): any session
    principal: str = ""  # the caller: answered from the store when it owns the session (live or ended)


class SessionList(Frame):
    """REST `GET /v1/sessions`: a page of the caller's stored sessions (an admin's: everyone's)."""

    gateway_id: str = ""
    principal: str = ""
    admin: bool = False
    limit: int = 20
    offset: int = 0


class SessionDelete(Frame):
    """REST `DELETE /v1/sessions/{id}`: erase the conversation for good (the caller's, or any
    with `admin`); a live session is ended first."""

    gateway_id: str = ""
    principal: str = ""
    admin: bool = False


class GatewayHeartbeat(Frame):
    """A gateway is alive. Sent on start and every heartbeat interval; a gateway silent for
    heartbeat_interval_s * heartbeat_liveness has its sessions ended. A new `incarnation` of the
    same gateway_id (a restart) ends the old one's sessions at once."""

    gateway_id: str = ""
    incarnation: str = ""


# --- gateway -> orchestrator: REST jobs (one request, one worker, results streamed back) ---------
# A job's `session_id` and `request_id` are both its job id, so results route like a session's.


class ChatJob(Frame):
    reply_to: str = ""  # unused (wire compatibility); replies go to gateway_id's egress
    messages: list[ChatMessage] = []
    max_new_tokens: int = 0
    language: str = ""
    gateway_id: str = ""
    principal: str = ""  # the caller: a reply to a prompt with history is cached for it alone


class SpeakJob(Frame):
    reply_to: str = ""  # unused (wire compatibility)
    text: str = ""
    language: str = ""
    voice: str = ""
    sample_rate: int = 16000
    gateway_id: str = ""
    speed: float = 1.0  # speaking rate (OpenAI's 0.25..4.0): 2.0 says it in about half the time


class TranscribeJob(Frame):
    reply_to: str = ""  # unused (wire compatibility)
    pcm: bytes = b""  # PCM16 mono at 16 kHz
    language: str = ""
    gateway_id: str = ""


class JobCancel(Frame):
    """The HTTP client went away: stop the job's work."""


class AdminRequest(Frame):
    """`models`: what every READY instance serves; `warmup`: run each instance's warm-up."""

    reply_to: str = ""  # unused (wire compatibility)
    action: AdminAction | Literal[""] = ""
    gateway_id: str = ""


# --- orchestrator -> gateway (egress) -------------------------------------------------------------


class TurnEvent(Frame):
    """Lifecycle events forwarded to the client as JSON: tts.start, tts.end, tts.cancel, ..."""

    event: TurnEventName | Literal[""] = ""
    text: str = ""


class TurnModelEntry(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    kind: str
    name: str
    version: str = ""
    sha256: str = ""


class StoredMessage(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """One message as the conversation store keeps it."""

    turn_id: int
    role: str
    content: str | None = None  # None when text storage is off
    heard: str | None = None  # an interrupted reply: what the person heard of it
    language: str = ""
    confidence: float | None = None
    timings: dict[str, float] = {}  # ms since the turn started (first_token, first_audio, ...)
    created: float = 0.0  # epoch seconds
    models: list[TurnModelEntry] = []  # on the assistant's message: the models of its turn


class SessionSummary(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    session_id: str
    principal: str = ""
    language: str = ""
    created: float = 0.0
    last_active: float = 0.0
    ended: float | None = None
    end_reason: str = ""
    turns: int = 0
    live: bool = False


class HandoffTrigger(msgspec.Struct, omit_defaults=True, gc=False):
    """A trigger that fired for a handoff (handoff area, issue 14); a map on the wire and in JSON."""

    kind: str  # explicit | frustration | fallbacks | low_confidence | repeated | client | api
    evidence: str = ""  # the words or figures that fired it (content: shown to operators only)
    score: float = 0.0
    at: float = 0.0  # epoch seconds


class HandoffInfo(msgspec.Struct, omit_defaults=True, gc=False):
    """A handoff with its context, for operators and `GET /v1/sessions/{id}` (handoff area)."""

    session_id: str
    state: str = "requested"  # requested | accepted | ended
    reason: str = ""  # the first trigger's kind
    language: str = ""
    requested: float = 0.0  # epoch seconds
    accepted: float | None = None
    ended: float | None = None
    outcome: str = ""  # released | timeout | caller_left
    operator: str = ""  # the operator principal that accepted it
    triggers: list[HandoffTrigger] = []
    history: list[ChatMessage] = []  # the dialogue so far (to operators)
    confidences: list[float] = []  # the ASR confidences of the latest user turns
    timings: dict[str, float] = {}  # the last assistant turn's stage timings, ms
    turns: list[int] = []  # the turns the operator spoke (who handled which turns)
    live: bool = False  # the caller is connected now


class HistoryReply(Frame):
    found: bool = False
    turns: int = 0
    messages: list[ChatMessage] = []
    language: str = ""
    system_prompt: str = ""
    stored: list[StoredMessage] = []  # the stored conversation's latest messages (`principal` asked)
    session: SessionSummary | None = None
    stored_total: int = 0  # how many messages are stored (more than `stored` when it was capped)
    handoffs: list[HandoffInfo] = []  # the session's handoffs to operators (handoff area)


class SessionListReply(Frame):
    sessions: list[SessionSummary] = []
    total: int = 0
    error: str = ""  # the store failed: the gateway answers 503


class SessionDeleted(Frame):
    found: bool = False
    error: str = ""


class ModelEntry(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    role: WorkerKind
    name: str
    version: str = ""
    sha256: str = ""
    device: str = ""
    engine: str = ""
    instances: list[str] = []
    warmup_ms: dict[str, float] = {}  # instance id -> its warm-up (after an admin warmup)


class AdminReply(Frame):
    models: list[ModelEntry] = []
    missing: list[WorkerKind] = []  # worker kinds with no READY instance, or that did not answer


class ErrorEvent(Frame):
    code: str = ""
    message: str = ""
    fatal: bool = False  # the session cannot go on


# --- orchestrator -> workers (work) ---------------------------------------------------------------


class GenerateRequest(Frame):
    messages: list[ChatMessage] = []
    max_new_tokens: int = 0
    language: str = ""
    prefix: str = ""  # reply text already sent: a replayed request continues after it


class SynthesizeRequest(Frame):
    text: str = ""
    language: str = ""
    voice: str = ""
    sample_rate: int = 16000
    speed: float = 1.0  # speaking rate; a voice that cannot change it refuses anything but 1.0


class TranscribeRequest(Frame):
    """A whole recording (REST /v1/asr), transcribed with segment timestamps."""

    pcm: bytes = b""
    language: str = ""


class WarmupRequest(Frame):
    """Run the engine's warm-up (a dummy request) now; answered with WarmupDone."""


# --- control (orchestrator PUB -> everyone SUB) ---------------------------------------------------


class Cancel(Frame):
    """Stop all work of (session_id, turn_id); turn_id -1 means every turn of the session."""


class Ping(Frame):
    pass


class StackStatus(Frame):
    """The orchestrator's view of the workers, published periodically for gateways' /readyz."""

    ready: dict[str, int] = {}  # kind -> READY instances
    incarnation: str = ""  # changes when the orchestrator restarts (its sessions are gone)


# --- workers -> orchestrator (results) ------------------------------------------------------------


class Ready(Frame):
    kind: WorkerKind | Literal[""] = ""
    instance_id: str = ""
    endpoint: str = ""
    model: str = ""
    info: dict[str, str] = {}


class Heartbeat(Frame):
    """Sent only by READY instances, and carries what READY carries, so an orchestrator that
    restarted learns every live instance from heartbeats alone."""

    kind: WorkerKind | Literal[""] = ""
    instance_id: str = ""
    busy: int = 0
    endpoint: str = ""
    model: str = ""
    info: dict[str, str] = {}  # as in Ready: /v1/models keeps its checksums after a restart


class VadEvent(Frame):
    """Speech activity seen by the ASR worker: "speech_start" (a new utterance; barge-in) or
    "speech_resume" (speech again after a pause inside the same utterance)."""

    event: VadEventName | Literal[""] = ""
    at_ms: int = 0
    instance_id: str = ""  # the ASR instance (older workers put it in request_id)


class TurnHypothesis(Frame):
    """The speaker paused: the whole utterance so far, transcribed, for an early reply."""

    text: str = ""
    at_ms: int = 0
    language: str = ""
    instance_id: str = ""  # the ASR instance (older workers put it in request_id)


class Leaving(Frame):
    """A worker is stopping (SIGTERM): route no new work to it. With `gone`, it has finished
    what it could and exits now; anything still in flight must be replayed."""

    kind: WorkerKind | Literal[""] = ""
    instance_id: str = ""
    gone: bool = False


class WorkerExited(Frame):
    """From the watchdog: a worker process died (don't wait for its heartbeats to stop)."""

    kind: WorkerKind | Literal[""] = ""
    program: str = ""
    instance: int = 0
    gave_up: bool = False  # its restart budget is spent: it stays down


class Segment(msgspec.Struct, array_like=True, gc=False):
    start_ms: int
    end_ms: int
    text: str
    confidence: float


class Transcription(Frame):
    """The answer to a TranscribeRequest (and of a REST transcribe job)."""

    text: str = ""
    language: str = ""
    language_probability: float = 0.0
    duration_ms: int = 0
    segments: list[Segment] = []


class WarmupDone(Frame):
    kind: WorkerKind | Literal[""] = ""
    instance_id: str = ""
    elapsed_ms: float = 0.0
    error: str = ""


class WorkerError(Frame):
    kind: WorkerKind | Literal[""] = ""
    code: str = ""
    message: str = ""


# --- human handoff (handoff area, issue 14): callers, operators and the orchestrator ---------------


class HandoffAsk(Frame):
    """Gateway -> orchestrator: hand `session_id` to a person (the client's `{"type":"handoff"}`,
    or `POST /api/v1/handoff`). Answered (when `request_id` is set) with a HandoffEvent or an
    ErrorEvent; the session's client gets `handoff.started` either way."""

    reason: str = ""
    principal: str = ""  # the asker: the session's owner, unless `admin`
    admin: bool = False  # an admin or operator (the gateway checked): any live session
    gateway_id: str = ""


OperatorAction = Literal["hello", "accept", "say", "release", "bye"]


class OperatorRequest(Frame):
    """Gateway -> orchestrator, from an operator socket (WS /v1/operator). `session_id` is the
    caller's session the action is about (none for hello/bye)."""

    operator_id: str = ""  # the operator connection (made by the gateway)
    principal: str = ""  # the operator's principal id (stored with the turns it handled)
    action: OperatorAction | Literal[""] = ""
    text: str = ""  # `say`: spoken to the caller
    gateway_id: str = ""


class HandoffEvent(Frame):
    """Orchestrator -> a caller's client: handoff.started / handoff.accepted / handoff.ended."""

    event: Literal["handoff.started", "handoff.accepted", "handoff.ended", ""] = ""
    reason: str = ""  # started: the trigger; ended: released | timeout | ...


class OperatorEvent(Frame):
    """Orchestrator -> an operator connection (`session_id` is the operator's connection id):
    handoff.queue, handoff.requested, handoff.accepted, handoff.taken, handoff.ended,
    transcript, error."""

    event: str = ""
    target: str = ""  # the caller's session it is about
    handoffs: list[HandoffInfo] = []
    text: str = ""  # transcript: what the caller said; error: why
    confidence: float = 0.0
    code: str = ""  # error: a machine-readable reason


IngressMessage = (
    SessionStart
    | AudioIn
    | EndTurn
    | TextIn
    | SessionEnd
    | PlaybackMark
    | SessionConfig
    | CancelTurn
    | HistoryAdd
    | HistoryDelete
    | Respond
    | ClearAudio
    | HistoryRequest
    | SessionList
    | SessionDelete
    | GatewayHeartbeat
    | ChatJob
    | SpeakJob
    | TranscribeJob
    | JobCancel
    | AdminRequest
    | HandoffAsk
    | OperatorRequest
)
EgressMessage = (
    TranscriptChunk
    | TokenChunk
    | AudioChunk
    | TurnEvent
    | ErrorEvent
    | HistoryReply
    | Transcription
    | AdminReply
    | SessionListReply
    | SessionDeleted
    | HandoffEvent
    | OperatorEvent
    | VadEvent  # speech_start, for OpenAI Realtime's speech_started (not in Inzwa's own protocol)
)
ControlMessage = Cancel | Ping | StackStatus
ResultMessage = (
    Ready
    | Heartbeat
    | WorkerError
    | Leaving
    | VadEvent
    | TurnHypothesis
    | TranscriptChunk
    | TokenChunk
    | AudioChunk
    | Transcription
    | WarmupDone
)
# WorkerExited has a socket of its own that only the watchdog may reach (the results socket
# does not decode it): a process that can reach the results socket cannot forge a worker's death.
WatchdogMessage = WorkerExited
AsrWork = (SessionStart | AudioIn | EndTurn | SessionEnd | TranscribeRequest | WarmupRequest | SessionConfig
           | ClearAudio)
LlmWork = GenerateRequest | WarmupRequest
TtsWork = SynthesizeRequest | WarmupRequest

_encoder = msgspec.msgpack.Encoder()


def encode(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def decoder(union: object) -> msgspec.msgpack.Decoder[Any]:
    """One decoder for the union a socket carries (prefer the typed ones below)."""
    return msgspec.msgpack.Decoder(union)


# Typed decoders, one per socket kind: `decode_x(data)` returns the socket's union, so a handler's
# `match` is checked against exactly what can arrive.
def ingress_decoder() -> msgspec.msgpack.Decoder[IngressMessage]:
    return msgspec.msgpack.Decoder(IngressMessage)


def egress_decoder() -> msgspec.msgpack.Decoder[EgressMessage]:
    return msgspec.msgpack.Decoder(EgressMessage)


def control_decoder() -> msgspec.msgpack.Decoder[ControlMessage]:
    return msgspec.msgpack.Decoder(ControlMessage)


def result_decoder() -> msgspec.msgpack.Decoder[ResultMessage]:
    return msgspec.msgpack.Decoder(ResultMessage)


def watchdog_decoder() -> msgspec.msgpack.Decoder[WatchdogMessage]:
    return msgspec.msgpack.Decoder(WatchdogMessage)


def work_decoder(kind: WorkerKind) -> msgspec.msgpack.Decoder[Any]:
    """The work union of a worker kind (what its work socket carries)."""
    return msgspec.msgpack.Decoder({"asr": AsrWork, "llm": LlmWork, "tts": TtsWork}[kind])
