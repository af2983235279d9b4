"""The REST API: chat, speech, transcription, models and warm-up, all through the orchestrator.

Each request becomes one job (see `orchestrator/jobs.py`); its results stream back on the job's
queue. Streaming responses wait for the first result before answering, so a worker that is
down or refuses becomes a proper status code rather than a 200 with a broken body; once
streaming, a client that leaves cancels the job so its worker stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

import msgspec
import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from common.frames import (
    AdminAction,
    AdminReply,
    AudioChunk,
    ChatJob,
    ChatMessage,
    EgressMessage,
    ErrorEvent,
    SpeakJob,
    TokenChunk,
    Transcription,
)
from common.languages import registry as languages
from common.settings import Settings
from gateway.auth import Principal
from gateway.bridge import Bridge
from gateway.codec import OggOpusWriter, wav_header
from gateway.errors import ApiError
from gateway.guard import Guard
from gateway.openai_models import model_list
from gateway.responses import OrjsonResponse
from gateway.uploads import read_audio_upload

SAMPLE_RATE = 16000

log = logging.getLogger(__name__)


def utf8_text(value: str) -> str:
    """JSON may carry lone surrogates ("\\ud800"): not text, and not encodable for the workers."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


Text = Annotated[str, AfterValidator(utf8_text)]


class ChatTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: Text


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[ChatTurn] = Field(min_length=1, max_length=64)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1, le=1024)
    language: Text = ""


class SpeakRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Annotated[Text, Field(min_length=1)]
    voice: Text | None = None
    format: Literal["wav", "opus"] = "wav"
    language: Text = ""


def check_language(code: str) -> str:
    if code and code not in languages.codes():
        raise ApiError(422, "unsupported_language",
                       f"language {code!r} has no language pack; use one of {languages.codes()}")
    return code


def check_text(text: str, limit: int, what: str = "text") -> None:
    if len(text) > limit:
        raise ApiError(422, "text_too_long", f"{what} is {len(text)} characters; the limit is {limit}")


def job_error(event: ErrorEvent) -> ApiError:
    status = 504 if event.code == "timeout" else 503
    return ApiError(status, event.code, event.message, {"Retry-After": "1"} if status == 503 else {})


class Jobs:
    """Runs jobs over the bridge and reads their results one by one."""

    def __init__(self, bridge: Bridge, settings: Settings) -> None:
        self.bridge = bridge
        self.settings = settings

    async def start(self, frame: Any) -> asyncio.Queue[EgressMessage]:
        """Submit a job; its results arrive on the returned queue (`frame.session_id` is its id)."""
        if not self.bridge.orchestrator_alive():
            raise ApiError(503, "not_ready", "the assistant is starting; try again", {"Retry-After": "2"})
        job_id, queue = self.bridge.open_job()
        frame.session_id = frame.request_id = job_id
        try:
            sent = await self.bridge.send(frame)
        except (UnicodeEncodeError, msgspec.EncodeError):  # validation should have caught these
            await self.bridge.close_job(job_id, finished=True)
            raise ApiError(422, "invalid_request", "the request cannot be encoded as text") from None
        if not sent:
            await self.bridge.close_job(job_id, finished=True)
            raise ApiError(503, "orchestrator_unavailable", "the orchestrator is not reachable")
        return queue

    async def end(self, job_id: str, *, finished: bool) -> None:
        """Forget the job; an unfinished one (its client left) is cancelled at the workers."""
        await self.bridge.close_job(job_id, finished=finished)

    async def next(self, queue: asyncio.Queue[EgressMessage]) -> EgressMessage:
        """The job's next result; the orchestrator times jobs out, this is the backstop."""
        try:
            return await asyncio.wait_for(queue.get(), self.settings.request_timeout_s + 5)
        except TimeoutError:
            raise ApiError(504, "timeout", "no answer from the assistant in time") from None

    async def first(self, job_id: str, queue: asyncio.Queue[EgressMessage]) -> EgressMessage:
        """The first result, read before any status is sent: an error here gets a real status."""
        try:
            first = await self.next(queue)
        except BaseException:
            await self.end(job_id, finished=False)
            raise
        if isinstance(first, ErrorEvent):
            await self.end(job_id, finished=True)
            raise job_error(first)
        return first


def add_rest_routes(router: APIRouter, bridge: Bridge, settings: Settings, guard: Guard) -> None:
    jobs = Jobs(bridge, settings)
    _add_text_routes(router, jobs, settings, guard)
    _add_audio_and_operation_routes(router, jobs, settings, guard)


def _add_text_routes(router: APIRouter, jobs: Jobs, settings: Settings, guard: Guard) -> None:
    caller = Depends(guard.caller)

    @router.post("/v1/chat", tags=["assistant"], responses={
        200: {"description": "The reply as JSON, or with `stream` a text/event-stream of `token` "
                             "events and one `done` (or `error`) event"},
        422: {"description": "Invalid request"}, 429: {"description": "Rate limited"},
        503: {"description": "No LLM worker"}})
    async def chat(body: ChatRequest, principal: Principal = caller) -> Any:
        """Chat with the assistant's LLM (history given by the caller; no voice)."""
        check_language(body.language)
        check_text("".join(m.content for m in body.messages), settings.max_text_chars, "messages")
        job = ChatJob(messages=[ChatMessage(m.role, m.content) for m in body.messages],
                      max_new_tokens=body.max_tokens or 0, language=body.language or settings.language,
                      principal=principal.id)  # a cached reply to a history is the caller's alone
        if body.stream:
            return await _chat_stream(jobs, job)
        return await _chat_reply(jobs, job)

    @router.post("/v1/tts", tags=["assistant"], response_class=StreamingResponse, responses={
        200: {"description": "Streamed audio: WAV (PCM16 mono 16 kHz) or Ogg/Opus (48 kHz)",
              "content": {"audio/wav": {}, "audio/ogg": {}}},
        422: {"description": "Invalid request"}, 429: {"description": "Rate limited"}})
    async def tts(body: SpeakRequest, _: Principal = caller) -> StreamingResponse:
        """Speak a text with the loaded voice; the body streams while synthesis goes on."""
        check_language(body.language)
        check_text(body.text, settings.max_text_chars)
        if not body.text.strip():
            raise ApiError(422, "empty_text", "text has nothing to say")
        voice = settings.tts_model.rstrip("/").rsplit("/", 1)[-1]
        if body.voice not in (None, "", voice):
            raise ApiError(422, "unknown_voice", f"voice {body.voice!r} is not loaded; use {voice!r}")
        job = SpeakJob(text=body.text, language=body.language or settings.language, voice=voice,
                       sample_rate=SAMPLE_RATE)
        return await _speech_stream(jobs, job, body.format, settings.opus_bitrate)


def _add_audio_and_operation_routes(router: APIRouter, jobs: Jobs, settings: Settings, guard: Guard) -> None:
    caller, admin = Depends(guard.caller), Depends(guard.admin)

    @router.post("/v1/asr", tags=["assistant"], openapi_extra=_UPLOAD_SCHEMA, responses={
        413: {"description": "Upload too large or too long"}, 415: {"description": "Not audio"},
        422: {"description": "Invalid request"}, 429: {"description": "Rate limited or over quota"}})
    async def asr(request: Request,
                  sample_rate: Annotated[int | None, Query(ge=8000, le=48000)] = None,
                  language: Annotated[str, Query(max_length=8)] = "",
                  principal: Principal = caller) -> OrjsonResponse:
        """Transcribe an uploaded WAV (or raw PCM16 mono with `sample_rate`)."""
        check_language(language)
        job = await read_audio_upload(request, settings, sample_rate)
        await guard.charge_audio(principal, len(job.pcm) / 2 / SAMPLE_RATE)
        job.language = language or "auto"
        result = await jobs.first(job.session_id, await jobs.start(job))
        await jobs.end(job.session_id, finished=True)
        if not isinstance(result, Transcription):
            raise ApiError(502, "bad_worker_reply", f"unexpected {type(result).__name__} from the ASR")
        return OrjsonResponse(_transcript_body(result))

    @router.get("/v1/models", tags=["operations"])
    async def models(_: Principal = caller) -> OrjsonResponse:
        """Every loaded model, in OpenAI's list shape (`data`: id, object, created, owned_by), each
        with role, name, version, sha256, device and the instances serving it; `models` as before."""
        return OrjsonResponse(model_list(_models_body(await _admin(jobs.bridge, "models"))))

    @router.post("/v1/admin/warmup", tags=["operations"], responses={
        403: {"description": "Needs an admin credential"},
        503: {"description": "Some worker kind is missing or did not warm up"}})
    async def warmup(_: Principal = admin) -> OrjsonResponse:
        """Run every worker's warm-up (a dummy request); answers with versions and checksums."""
        reply = await _admin(jobs.bridge, "warmup")
        return OrjsonResponse(_models_body(reply), status_code=503 if reply.missing else 200)


_UPLOAD_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "audio/wav": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


async def _admin(bridge: Bridge, action: AdminAction) -> AdminReply:
    reply = await bridge.admin(action)
    if reply is None:
        raise ApiError(503, "orchestrator_unavailable", "the orchestrator did not answer")
    if isinstance(reply, ErrorEvent):
        raise ApiError(400, reply.code, reply.message)
    return reply


def _models_body(reply: AdminReply) -> dict[str, Any]:
    models = [{"role": m.role, "name": m.name, "version": m.version, "sha256": m.sha256,
               "device": m.device, "engine": m.engine, "instances": m.instances,
               **({"warmup_ms": m.warmup_ms} if m.warmup_ms else {})} for m in reply.models]
    return {"models": models, "missing": reply.missing}


def _transcript_body(result: Transcription) -> dict[str, Any]:
    segments = [{"start_ms": s.start_ms, "end_ms": s.end_ms, "text": s.text,
                 "confidence": s.confidence} for s in result.segments]
    weights = [max(1, s.end_ms - s.start_ms) for s in result.segments]
    confidence = (sum(s.confidence * w for s, w in zip(result.segments, weights, strict=True))
                  / sum(weights)) if weights else 0.0
    return {"text": result.text, "language": result.language,
            "language_probability": result.language_probability, "duration_ms": result.duration_ms,
            "confidence": round(confidence, 3), "segments": segments}


async def run_chat(jobs: Jobs, job: ChatJob, on_token: Callable[[str], bool]) -> None:
    """Run a chat job to its end, handing each token to `on_token`, which returns True to stop
    early (a stop sequence: the rest of the job is cancelled). An error event raises its ApiError."""
    queue = await jobs.start(job)
    done = stopped = False
    try:
        while not done and not stopped:
            frame = await jobs.next(queue)
            if isinstance(frame, ErrorEvent):
                done = True
                raise job_error(frame)
            if isinstance(frame, TokenChunk):
                stopped = on_token(frame.token)
                done = frame.is_final
    finally:
        await jobs.end(job.session_id, finished=done)


async def _chat_reply(jobs: Jobs, job: ChatJob) -> OrjsonResponse:
    tokens: list[str] = []

    def keep(token: str) -> bool:
        tokens.append(token)
        return False

    await run_chat(jobs, job, keep)
    return OrjsonResponse({"id": job.session_id, "language": job.language,
                           "message": {"role": "assistant", "content": "".join(tokens).strip()},
                           "tokens": sum(1 for token in tokens if token)})


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _chat_stream(jobs: Jobs, job: ChatJob) -> StreamingResponse:
    queue = await jobs.start(job)
    first = await jobs.first(job.session_id, queue)

    async def events() -> AsyncIterator[bytes]:
        text, frame, done = "", first, False
        try:
            while not done:
                if isinstance(frame, ErrorEvent):
                    done = True
                    yield _sse("error", {"error": frame.code, "message": frame.message})
                    break
                if isinstance(frame, TokenChunk) and frame.token:
                    text += frame.token
                    yield _sse("token", {"seq": frame.seq, "token": frame.token})
                if isinstance(frame, TokenChunk) and frame.is_final:
                    done = True
                    yield _sse("done", {"id": job.session_id, "text": text.strip()})
                    break
                frame = await jobs.next(queue)
        finally:
            await jobs.end(job.session_id, finished=done)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _speech_stream(jobs: Jobs, job: SpeakJob, fmt: str, bitrate: int) -> StreamingResponse:
    queue = await jobs.start(job)
    first = await jobs.first(job.session_id, queue)
    if isinstance(first, AudioChunk) and first.is_final and not first.payload:
        await jobs.end(job.session_id, finished=True)
        raise ApiError(422, "nothing_to_say", "the text has nothing the voice can say")
    writer = OggOpusWriter(SAMPLE_RATE, bitrate) if fmt == "opus" else None

    async def body() -> AsyncIterator[bytes]:
        frame, done = first, False
        try:
            if writer is None:
                yield wav_header(SAMPLE_RATE)
            while isinstance(frame, AudioChunk):
                if frame.payload:
                    chunk = frame.payload if writer is None else writer.write(frame.payload)
                    if chunk:
                        yield chunk
                if frame.is_final:
                    done = True
                    break
                frame = await jobs.next(queue)
            if isinstance(frame, ErrorEvent):
                done = True  # headers are gone: the body just ends early (the log says why)
                log.warning("speech job failed mid-stream", extra={"code": frame.code})
            if writer is not None:
                yield writer.close()
        finally:
            await jobs.end(job.session_id, finished=done)

    media = "audio/ogg" if writer is not None else "audio/wav"
    return StreamingResponse(body(), media_type=media, headers={"Cache-Control": "no-cache"})
