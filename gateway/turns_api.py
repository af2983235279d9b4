"""Whole turns over HTTP: `POST /v1/turns` and the job API under `/api/v1`.

Both run a turn with `gateway.whole_turn` (one implementation): the request's audio upload
(anything PyAV reads: WAV, WebM/Opus, Ogg/Opus, MP3...) or JSON `{"text": ...}`, optionally a
`session_id` to continue a conversation, becomes a background `TurnJob`.

* `POST /v1/turns` answers with the reply audio streamed as it is synthesized (WAV, or Ogg/Opus
  for `Accept: audio/ogg` / `?audio_format=opus`), the transcript and ids in headers and the
  reply text at the job's JSON link; or, for `Accept: application/json` / `?format=json`, one
  JSON body with base64 audio once the turn is done.
* `POST /api/v1/interaction/start` answers 202 `{job_id, session_id}` at once;
  `GET /api/v1/interaction/result/{job_id}` streams the audio the same way (from its start,
  whenever asked within `turn_job_ttl_s` of the end) or gives the texts with `?format=json`.
  A job is its caller's: an unknown, expired or someone else's id is the same 404.
* `GET /api/v1/health` (open) and `GET /api/v1/metrics` (admin) are aliases of `/readyz`'s
  detail and `/metrics`.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Literal
from urllib.parse import quote

import pydantic
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from common.metrics import exposition
from common.settings import Settings
from gateway.auth import Principal
from gateway.bridge import Bridge
from gateway.errors import ApiError
from gateway.guard import Guard
from gateway.media import DECODE_RATE, SpeechEncoder
from gateway.responses import OrjsonResponse
from gateway.rest import Text, check_language, check_text
from gateway.security import json_too_deep, register_upload_path
from gateway.uploads import decode_recording, read_body
from gateway.whole_turn import TurnInput, TurnJob, TurnJobs, TurnRunner

AudioFormat = Literal["wav", "opus"]
_UPLOAD: dict[str, object] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["text"], "properties": {
        "text": {"type": "string"}, "session_id": {"type": "string", "format": "uuid"},
        "language": {"type": "string"}}}},
    "audio/*": {"schema": {"type": "string", "format": "binary"}}}}}


class TurnText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Annotated[Text, Field(min_length=1)]
    session_id: str = ""
    language: Text = ""


def _session_id(value: str) -> str:
    """A conversation id is a UUID (as on the WebSocket); none given starts a new one."""
    if not value:
        return str(uuid.uuid4())
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ApiError(422, "bad_session_id", "session_id must be a UUID") from None


async def read_turn(request: Request, settings: Settings, guard: Guard, principal: Principal) -> TurnInput:
    """The request as a turn: JSON text, or an audio upload (charged to the audio quota)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    query = request.query_params
    if media == "application/json":
        raw = await read_body(request, settings.max_json_bytes)
        if json_too_deep(raw):
            raise ApiError(422, "invalid_request", "the JSON nests too deeply")
        try:
            body = TurnText.model_validate_json(raw)
        except pydantic.ValidationError as exc:
            raise ApiError(422, "invalid_request", f"invalid turn: {exc.errors()[0]['msg']}") from None
        check_text(body.text, settings.max_text_chars)
        if not body.text.strip():
            raise ApiError(422, "empty_text", "text has nothing to say")
        return TurnInput(text=body.text.strip(), language=check_language(body.language),
                         session_id=_session_id(body.session_id or query.get("session_id", "")))
    pcm = await decode_recording(await read_body(request, settings.max_upload_bytes),
                                 settings.max_audio_seconds,
                                 "the upload is empty (send audio, or JSON with text)")
    await guard.charge_audio(principal, len(pcm) / 2 / DECODE_RATE)
    return TurnInput(pcm=pcm, language=check_language(query.get("language", "")),
                     session_id=_session_id(query.get("session_id", "")))


def _wants(request: Request, fmt: str | None) -> str:
    """json, wav or opus: the query's `format`/`audio_format` first, then the Accept header."""
    if fmt:
        return fmt
    accept = request.headers.get("accept", "").lower()
    if "application/json" in accept:
        return "json"
    return "opus" if "audio/ogg" in accept or "audio/opus" in accept else "wav"


def _headers(job: TurnJob) -> dict[str, str]:
    return {"X-Job-Id": job.job_id, "X-Session-Id": job.session_id, "Cache-Control": "no-cache",
            "X-Transcript": quote(job.transcript, safe=" "),  # UTF-8, percent-encoded
            "Link": f'</api/v1/interaction/result/{job.job_id}?format=json>; rel="result"'}


async def stream_audio(job: TurnJob, fmt: str, bitrate: int) -> StreamingResponse:
    """The reply audio from its start, sent as it is produced; the status waits for the first
    phrase, so a turn that fails before any audio gets its real status."""
    await job.ready()
    if job.error is not None and not job.audio:
        raise job.error
    encoder = SpeechEncoder(fmt, job.sample_rate, bitrate)

    async def body() -> AsyncIterator[bytes]:
        async for pcm in job.pcm():
            out = encoder.write(pcm)
            if out:
                yield out
        yield encoder.close()

    return StreamingResponse(body(), media_type=encoder.media_type, headers=_headers(job))


async def json_result(job: TurnJob, fmt: str, bitrate: int) -> OrjsonResponse:
    """The finished turn as JSON, the audio base64 in `audio` (WAV or Ogg/Opus)."""
    await job.finished()
    if job.error is not None:
        raise job.error
    encoder = SpeechEncoder(fmt, job.sample_rate, bitrate)
    data = b"".join([encoder.write(pcm) for pcm in job.audio] + [encoder.close()])
    return OrjsonResponse(job.result() | {"audio": base64.b64encode(data).decode(),
                                          "audio_format": fmt, "audio_type": encoder.media_type},
                          headers={"X-Job-Id": job.job_id, "X-Session-Id": job.session_id})


def add_turn_routes(app: FastAPI, bridge: Bridge, settings: Settings, guard: Guard) -> TurnJobs:
    jobs = TurnJobs(settings)
    runner = TurnRunner(bridge, settings, guard)
    router = APIRouter()
    _add_turns(router, jobs, runner, settings, guard)
    _add_job_api(router, jobs, runner, settings, guard)
    _add_aliases(router, bridge, guard)
    for path in ("/v1/turns", "/api/v1/interaction/start"):
        register_upload_path(path)  # they read (and cap) their own bodies: audio or JSON
    app.include_router(router)
    app.state.turn_jobs = jobs
    return jobs


def _add_turns(router: APIRouter, jobs: TurnJobs, runner: TurnRunner, settings: Settings,
               guard: Guard) -> None:
    @router.post("/v1/turns", tags=["assistant"], openapi_extra=_UPLOAD, response_class=Response, responses={
        200: {"description": "The reply audio streamed (WAV or Ogg/Opus; transcript and ids in "
                             "X-Transcript, X-Session-Id, X-Job-Id), or JSON with base64 audio",
              "content": {"audio/wav": {}, "audio/ogg": {}, "application/json": {}}},
        409: {"description": "The session is in use or cannot be continued"},
        413: {"description": "Upload too large or too long"}, 415: {"description": "Not audio"},
        422: {"description": "Invalid request, or no speech heard"}, 429: {"description": "Rate limited"}})
    async def turns(request: Request, principal: Principal = Depends(guard.caller),
                    format: Annotated[Literal["json", "audio"] | None, Query()] = None,
                    audio_format: Annotated[AudioFormat | None, Query()] = None) -> Response:
        """One whole turn: audio or text in, the spoken answer out (optionally continuing
        `session_id`, a conversation of yours)."""
        said = await read_turn(request, settings, guard, principal)
        job = jobs.new(principal.id, said.session_id)
        jobs.run(runner, job, said, principal)
        wants = _wants(request, format if format == "json" else audio_format)
        if wants == "json":
            return await json_result(job, audio_format or "wav", settings.opus_bitrate)
        return await stream_audio(job, wants, settings.opus_bitrate)


def _add_job_api(router: APIRouter, jobs: TurnJobs, runner: TurnRunner, settings: Settings,
                 guard: Guard) -> None:
    caller = Depends(guard.caller)

    @router.post("/api/v1/interaction/start", tags=["jobs"], status_code=202, openapi_extra=_UPLOAD,
                 responses={409: {"description": "The session cannot be continued"},
                            413: {"description": "Upload too large"}, 415: {"description": "Not audio"}})
    async def start(request: Request, principal: Principal = caller) -> OrjsonResponse:
        """Start a turn (audio upload or JSON text, optional `session_id`); 202 with its job id."""
        said = await read_turn(request, settings, guard, principal)
        job = jobs.new(principal.id, said.session_id)
        jobs.run(runner, job, said, principal)
        return OrjsonResponse({"job_id": job.job_id, "session_id": job.session_id,
                               "result": f"/api/v1/interaction/result/{job.job_id}"}, status_code=202)

    @router.get("/api/v1/interaction/result/{job_id}", tags=["jobs"], response_class=Response,
                responses={404: {"description": "No such job of yours (unknown, expired or not yours)"}})
    async def result(job_id: str, request: Request, principal: Principal = caller,
                     format: Annotated[Literal["json", "wav", "opus"] | None, Query()] = None,
                     wait: bool = False) -> Response:
        """The reply audio streamed from its start as it is produced (WAV, or Ogg/Opus by
        `Accept`/`format`), or with `format=json` the transcript, reply text and timings so far
        (`wait=true`: once the turn is done)."""
        job = jobs.get(job_id, principal.id)
        if job is None:
            raise ApiError(404, "job_not_found", "no job with that id is yours (or it expired)")
        wants = _wants(request, format)
        if wants != "json":
            return await stream_audio(job, wants, settings.opus_bitrate)
        if wait:
            await job.finished()
        return OrjsonResponse(job.result())


def _add_aliases(router: APIRouter, bridge: Bridge, guard: Guard) -> None:
    @router.get("/api/v1/health", tags=["operations"])
    async def health() -> OrjsonResponse:
        """Liveness with readiness detail (no credentials, like /healthz and /readyz)."""
        ok, detail = bridge.ready()
        return OrjsonResponse({"status": "ok", "ready": ok, **detail})

    @router.get("/api/v1/metrics", tags=["operations"], response_class=Response,
                dependencies=[Depends(guard.admin)])
    async def metrics() -> Response:
        """Prometheus metrics, as /metrics (admin credential when auth is on)."""
        body, content_type = exposition()
        return Response(body, media_type=content_type)
