"""OpenAI-compatible REST: /v1/audio/transcriptions, /v1/audio/speech, /v1/chat/completions.

Each request is the same orchestrator job Inzwa's own routes run (a TranscribeJob, SpeakJob or
ChatJob through `gateway.rest.Jobs`), with the same auth, rate limits, audio quota, validation
limits and safety filters; only the shapes on the wire are OpenAI's. Error bodies are rewritten
into OpenAI's shape by `gateway.openai_errors.OpenAIErrors`.

What is OpenAI's and what is not (also in the README):
- transcriptions: `prompt` and `temperature` are accepted and not used (the ASR job takes no
  prompt); `stream=true` sends one `transcript.text.delta` per segment once the clip is
  transcribed (a clip is transcribed whole), then `transcript.text.done`.
- speech: 24 kHz mono like OpenAI's; `speed` (0.25..4.0) is the voice's own speaking rate (Piper:
  VITS `length_scale` per request), never a time-stretch; a voice without one refuses all but 1.0.
- chat: `temperature` is accepted and not used (the LLM worker's setting applies); `stop` is
  applied here, on the text; `usage.prompt_tokens` is an estimate (the LLM worker reports no
  prompt count), `completion_tokens` counts the tokens the worker streamed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from common.frames import AudioChunk, ChatJob, ChatMessage, ErrorEvent, SpeakJob, TokenChunk
from common.settings import Settings
from gateway.auth import Principal
from gateway.bridge import Bridge
from gateway.errors import ApiError
from gateway.guard import Guard
from gateway.media import SpeechEncoder
from gateway.openai_errors import OpenAIErrors
from gateway.openai_models import check_model, check_voice
from gateway.openai_transcribe import add_transcription_route
from gateway.responses import OrjsonResponse
from gateway.rest import Jobs, Text, check_text, run_chat

SPEECH_RATE = 24000  # OpenAI's speech (and its `pcm` format) is 24 kHz mono PCM16
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: Text


class ChatCompletionMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # OpenAI clients send many optional knobs (top_p, user, metadata...): unknown ones are ignored.
    model_config = ConfigDict(extra="ignore")
    model: Text
    messages: list[ChatCompletionMessage] = Field(min_length=1, max_length=64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=1024)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1024)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stop: Text | list[Text] | None = None
    n: int = Field(default=1, ge=1, le=1)


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: Text
    input: Annotated[Text, Field(min_length=1)]
    voice: Text | None = None
    response_format: Literal["wav", "pcm", "opus", "mp3", "flac", "aac"] = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    instructions: Text | None = None
    stream_format: Literal["audio"] = "audio"


def add_openai_routes(app: FastAPI, bridge: Bridge, settings: Settings, guard: Guard) -> None:
    """The OpenAI-compatible REST routes, the Realtime WebSocket and the error translation."""
    from gateway.realtime import add_realtime_route  # the WebSocket side lives in its own module

    router = APIRouter(tags=["openai"])
    jobs = Jobs(bridge, settings)
    add_transcription_route(router, jobs, settings, guard)
    _add_speech_route(router, jobs, settings, guard)
    _add_chat_route(router, jobs, settings, guard)
    app.include_router(router)
    add_realtime_route(app, bridge, settings, guard)
    app.add_middleware(OpenAIErrors)  # added last: outermost, sees every refusal on its paths


# --- speech ----------------------------------------------------------------------------------------

def _add_speech_route(router: APIRouter, jobs: Jobs, settings: Settings, guard: Guard) -> None:
    @router.post("/v1/audio/speech", response_class=StreamingResponse, responses={
        200: {"description": "The audio, streamed as it is synthesized",
              "content": {"audio/mpeg": {}, "audio/wav": {}, "audio/ogg": {}, "audio/flac": {},
                          "audio/aac": {}, "audio/pcm": {}}},
        400: {"description": "Invalid request"}, 404: {"description": "Unknown model"},
        429: {"description": "Rate limited"}})
    async def speech(body: SpeechRequest, _: Principal = Depends(guard.caller)) -> StreamingResponse:
        """OpenAI's text to speech: the loaded voice, 24 kHz, in the asked format."""
        check_model(settings, "tts", body.model)
        voice = check_voice(settings, body.voice)
        check_text(body.input, min(settings.openai_max_speech_chars, settings.max_text_chars), "input")
        if not body.input.strip():
            raise ApiError(422, "empty_input", "input has nothing to say")
        job = SpeakJob(text=body.input, language=settings.language, voice=voice, sample_rate=SPEECH_RATE,
                       speed=body.speed)  # the voice's own rate (Piper: length_scale), no stretching
        return await _speech_body(jobs, job, SpeechEncoder(body.response_format, SPEECH_RATE,
                                                           settings.opus_bitrate))


async def _speech_body(jobs: Jobs, job: SpeakJob, encoder: SpeechEncoder) -> StreamingResponse:
    queue = await jobs.start(job)
    first = await jobs.first(job.session_id, queue)  # a refusal here is still a status code
    if isinstance(first, AudioChunk) and first.is_final and not first.payload:
        await jobs.end(job.session_id, finished=True)
        raise ApiError(422, "nothing_to_say", "the input has nothing the voice can say")

    async def body() -> AsyncIterator[bytes]:
        frame, done = first, False
        try:
            while isinstance(frame, AudioChunk):
                chunk = encoder.write(frame.payload) if frame.payload else b""
                if chunk:
                    yield chunk
                if frame.is_final:
                    done = True
                    break
                frame = await jobs.next(queue)
            if isinstance(frame, ErrorEvent):
                done = True  # the status is sent: the body ends early, as /v1/tts does
            tail = encoder.close()
            if tail:
                yield tail
        finally:
            await jobs.end(job.session_id, finished=done)

    return StreamingResponse(body(), media_type=encoder.media_type, headers={"Cache-Control": "no-cache"})


# --- chat ------------------------------------------------------------------------------------------

class Completion:
    """One completion's text as it grows, cut at the first stop sequence."""

    def __init__(self, stops: list[str], limit: int) -> None:
        self.stops, self.limit = [s for s in stops if s], limit
        self.text, self.sent, self.tokens = "", 0, 0
        self.stopped = False

    def add(self, token: str) -> str:
        """The text that may go out now (held back while it could be the start of a stop)."""
        if self.stopped:
            return ""  # a token already in flight when the stop was seen
        self.tokens += 1 if token else 0
        self.text += token
        for stop in self.stops:
            at = self.text.find(stop)
            if at >= 0:
                self.text, self.stopped = self.text[:at], True
        hold = 0 if self.stopped else max((len(s) - 1 for s in self.stops), default=0)
        ready = self.text[self.sent: max(self.sent, len(self.text) - hold)]
        self.sent += len(ready)
        return ready

    def rest(self) -> str:
        ready, self.sent = self.text[self.sent:], len(self.text)
        return ready

    def finish_reason(self) -> str:
        return "length" if not self.stopped and self.limit and self.tokens >= self.limit else "stop"


def _add_chat_route(router: APIRouter, jobs: Jobs, settings: Settings, guard: Guard) -> None:
    @router.post("/v1/chat/completions", responses={
        200: {"description": "A chat.completion, or with `stream` SSE chat.completion.chunk objects "
                             "and `data: [DONE]`"},
        400: {"description": "Invalid request"}, 404: {"description": "Unknown model"},
        429: {"description": "Rate limited"}})
    async def chat_completions(body: ChatCompletionRequest,
                               principal: Principal = Depends(guard.caller)) -> Any:
        """OpenAI's chat completions on the assistant's LLM (no voice)."""
        check_model(settings, "llm", body.model)
        messages = [ChatMessage("system" if m.role == "developer" else m.role, m.text())
                    for m in body.messages]
        check_text("".join(m.content for m in messages), settings.max_text_chars, "messages")
        limit = body.max_completion_tokens or body.max_tokens or 0
        job = ChatJob(messages=messages, max_new_tokens=limit, language=settings.language,
                      principal=principal.id)  # a cached reply to a history is the caller's alone
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > 4:
            raise ApiError(422, "invalid_request", "stop takes at most 4 sequences")
        completion = Completion(stops, limit or settings.llm_max_new_tokens)
        prompt_tokens = _estimate_tokens(" ".join(m.content for m in messages))
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return await _chat_stream(jobs, job, body.model, completion, prompt_tokens, usage)
        return await _chat_reply(jobs, job, body.model, completion, prompt_tokens)


def _estimate_tokens(text: str) -> int:
    # The LLM worker does not report the prompt's token count: about 4 characters a token.
    return max(1, round(len(text) / 4))


def _usage(prompt_tokens: int, completion: Completion) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion.tokens,
            "total_tokens": prompt_tokens + completion.tokens}


async def _chat_reply(jobs: Jobs, job: ChatJob, model: str, completion: Completion,
                      prompt_tokens: int) -> OrjsonResponse:
    def add(token: str) -> bool:
        completion.add(token)
        return completion.stopped  # a stop sequence cancels the rest

    await run_chat(jobs, job, add)
    message = {"role": "assistant", "content": completion.text.strip()}
    return OrjsonResponse({
        "id": f"chatcmpl-{job.session_id}", "object": "chat.completion", "created": int(time.time()),
        "model": model, "choices": [{"index": 0, "message": message, "logprobs": None,
                                     "finish_reason": completion.finish_reason()}],
        "usage": _usage(prompt_tokens, completion)})


def _chunk(job_id: str, model: str, created: int, delta: dict[str, Any], finish: str | None,
           usage: dict[str, int] | None = None) -> bytes:
    body: dict[str, Any] = {"id": f"chatcmpl-{job_id}", "object": "chat.completion.chunk",
                            "created": created, "model": model,
                            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish}] if usage is None else []}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def _chat_stream(jobs: Jobs, job: ChatJob, model: str, completion: Completion,
                       prompt_tokens: int, include_usage: bool) -> StreamingResponse:
    queue = await jobs.start(job)
    first = await jobs.first(job.session_id, queue)
    created = int(time.time())

    async def events() -> AsyncIterator[bytes]:
        frame, done = first, False
        try:
            yield _chunk(job.session_id, model, created, {"role": "assistant", "content": ""}, None)
            while not done and not completion.stopped:
                if isinstance(frame, ErrorEvent):  # headers are gone: OpenAI's in-stream error
                    done = True
                    yield b"data: " + orjson.dumps({"error": {"message": frame.message, "type":
                                                    "server_error", "code": frame.code}}) + b"\n\n"
                    return
                if isinstance(frame, TokenChunk):
                    text = completion.add(frame.token) + (completion.rest() if frame.is_final else "")
                    if text:
                        yield _chunk(job.session_id, model, created, {"content": text}, None)
                    done = frame.is_final
                if not done and not completion.stopped:
                    frame = await jobs.next(queue)
            yield _chunk(job.session_id, model, created, {}, completion.finish_reason())
            if include_usage:
                yield _chunk(job.session_id, model, created, {}, None, _usage(prompt_tokens, completion))
            yield b"data: [DONE]\n\n"
        finally:
            await jobs.end(job.session_id, finished=done)

    return StreamingResponse(events(), media_type="text/event-stream", headers=_SSE_HEADERS)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"

