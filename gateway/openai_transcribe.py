"""POST /v1/audio/transcriptions: OpenAI's speech to text on Inzwa's ASR job.

The multipart body is read under `max_upload_bytes` by this route itself (the edge exempts the
path from its JSON cap, see gateway/security.py UPLOAD_PATHS), then parsed from memory; the
file is decoded with PyAV (WAV, WebM/Opus, Ogg/Opus, MP3, M4A, anything FFmpeg reads) in a
worker thread, capped at `max_audio_seconds` while decoding. The transcription is one
TranscribeJob, charged to the caller's daily audio quota like `/v1/asr`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import FormData, UploadFile

from common.frames import TranscribeJob, Transcription
from common.languages import registry as languages
from common.settings import Settings
from gateway.auth import Principal
from gateway.errors import ApiError
from gateway.guard import Guard
from gateway.media import DECODE_RATE
from gateway.openai_models import check_model
from gateway.responses import OrjsonResponse
from gateway.rest import Jobs
from gateway.uploads import decode_recording, read_body

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
MAX_FIELD_CHARS = 4096

_SCHEMA: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {
    "schema": {"type": "object", "required": ["file", "model"], "properties": {
        "file": {"type": "string", "format": "binary"},
        "model": {"type": "string"},
        "language": {"type": "string"},
        "prompt": {"type": "string"},
        "response_format": {"type": "string", "enum": list(FORMATS)},
        "temperature": {"type": "number"},
        "stream": {"type": "boolean"},
    }}}}}}


def add_transcription_route(router: APIRouter, jobs: Jobs, settings: Settings, guard: Guard) -> None:
    @router.post("/v1/audio/transcriptions", openapi_extra=_SCHEMA, response_model=None, responses={
        200: {"description": "The transcript (json, text, verbose_json, srt, vtt, or SSE with stream)"},
        400: {"description": "Invalid request or unusable audio"}, 404: {"description": "Unknown model"},
        413: {"description": "Upload too large or too long"}, 429: {"description": "Rate limited"}})
    async def transcriptions(request: Request, principal: Principal = Depends(guard.caller)) -> Response:
        """OpenAI's speech to text: a multipart `file` in any common audio format."""
        form = await _read_form(request, settings)
        model = _field(form, "model")
        check_model(settings, "asr", model)
        fmt = _field(form, "response_format") or "json"
        if fmt not in FORMATS:
            raise ApiError(422, "invalid_request", f"response_format must be one of {list(FORMATS)}")
        language = _field(form, "language")
        if language and language not in languages.codes():
            raise ApiError(422, "unsupported_language",
                           f"language {language!r} has no language pack; use one of {languages.codes()}")
        stream = _field(form, "stream").lower() in ("true", "1")
        pcm = await _decode(form, settings)
        await guard.charge_audio(principal, len(pcm) / 2 / DECODE_RATE)
        job = TranscribeJob(pcm=pcm, language=language or "auto")
        result = await jobs.first(job.session_id, await jobs.start(job))
        await jobs.end(job.session_id, finished=True)
        if not isinstance(result, Transcription):
            raise ApiError(502, "bad_worker_reply", f"unexpected {type(result).__name__} from the ASR")
        if stream:
            return StreamingResponse(_sse(result), media_type="text/event-stream")
        return _render(result, fmt)


async def _read_form(request: Request, settings: Settings) -> FormData:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(422, "invalid_request", "the body must be multipart/form-data with a file")
    body = await read_body(request, settings.max_upload_bytes)
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=1, max_fields=32)
    except Exception as exc:  # starlette raises its own MultiPartException / HTTPException
        raise ApiError(422, "invalid_request", f"unreadable multipart body: {exc}") from None


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_FIELD_CHARS:
        raise ApiError(422, "invalid_request", f"{name} must be a short text field")
    return value.strip()


async def _decode(form: FormData, settings: Settings) -> bytes:
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(422, "invalid_request", "file is required (a multipart file field)")
    return await decode_recording(await upload.read(), settings.max_audio_seconds, "the file is empty")


def _render(result: Transcription, fmt: str) -> Response:
    text = result.text.strip()
    if fmt == "text":
        return PlainTextResponse(text)
    if fmt in ("srt", "vtt"):
        media = "text/vtt" if fmt == "vtt" else "text/plain"
        return PlainTextResponse(subtitles(result, fmt), media_type=media)
    usage = {"type": "duration", "seconds": round(result.duration_ms / 1000, 3)}
    if fmt == "json":
        return OrjsonResponse({"text": text, "usage": usage})
    segments = [{"id": i, "seek": 0, "start": s.start_ms / 1000, "end": s.end_ms / 1000,
                 "text": s.text.strip(), "tokens": [], "temperature": 0.0, "avg_logprob": 0.0,
                 "compression_ratio": 0.0, "no_speech_prob": 0.0, "confidence": s.confidence}
                for i, s in enumerate(result.segments)]
    return OrjsonResponse({"task": "transcribe", "language": result.language,
                           "duration": result.duration_ms / 1000, "text": text,
                           "segments": segments, "usage": usage})


def _stamp(ms: int, sep: str) -> str:
    hours, rest = divmod(max(0, ms), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{sep}{millis:03d}"


def subtitles(result: Transcription, fmt: str) -> str:
    """SubRip or WebVTT cues, one per segment."""
    sep = "," if fmt == "srt" else "."
    cues = []
    for i, s in enumerate(result.segments, 1):
        timing = f"{_stamp(s.start_ms, sep)} --> {_stamp(s.end_ms, sep)}"
        cues.append(f"{i}\n{timing}\n{s.text.strip()}\n" if fmt == "srt" else f"{timing}\n{s.text.strip()}\n")
    body = "\n".join(cues)
    return body if fmt == "srt" else "WEBVTT\n\n" + body


async def _sse(result: Transcription) -> AsyncIterator[bytes]:
    # The clip was transcribed whole: one delta a segment, then the whole text.
    for i, segment in enumerate(result.segments):
        delta = (" " if i else "") + segment.text.strip()
        yield b"data: " + orjson.dumps({"type": "transcript.text.delta", "delta": delta}) + b"\n\n"
    yield b"data: " + orjson.dumps({"type": "transcript.text.done", "text": result.text.strip()}) + b"\n\n"
