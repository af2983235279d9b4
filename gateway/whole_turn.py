"""One whole turn from one request: audio or text in, transcript, reply text and reply audio out.

The one implementation behind `POST /v1/turns` and the job API (`/api/v1/interaction/*`). A
turn is a `TurnJob` that runs in the background and keeps what it produced for
`turn_job_ttl_s` after it ends, so any number of readers (the request that started it, a
later `GET .../result/{job_id}`) can stream its audio from the start while it is still being
synthesized.

How a turn runs: an upload is transcribed by a transcription job (the whole clip at once: a
recording has no turn-taking to do), then the text goes to the orchestrator as a typed message
of a short-lived voice session (`SessionStart` + `TextIn`). So a whole turn gets exactly what a
spoken one gets: the conversation's history and its resume rules (a `session_id` of the same
caller continues it; the store writes the turn), the safety filters, the fallbacks and the
phrase-by-phrase synthesis. The session's frames arrive unpaced on a bridge job queue (there is
no live listener to pace for); each phrase is reported heard as it is received, and the turn
is marked done before the session ends, so the history holds the whole reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from common.frames import (
    AudioChunk,
    EgressMessage,
    ErrorEvent,
    HandoffEvent,
    PlaybackMark,
    SessionEnd,
    SessionStart,
    TextIn,
    TokenChunk,
    TranscribeJob,
    Transcription,
    TurnEvent,
)
from common.languages import registry as languages
from common.settings import Settings
from gateway.auth import Principal
from gateway.bridge import Bridge, scoped_session_id
from gateway.errors import ApiError
from gateway.guard import Guard
from gateway.rest import Jobs, job_error

log = logging.getLogger(__name__)


@dataclass
class TurnInput:
    """What the caller said: typed `text`, or `pcm` (PCM16 mono 16 kHz) to transcribe."""

    text: str = ""
    pcm: bytes = b""
    language: str = ""
    session_id: str = ""  # the caller's id of the conversation to continue ("" : a new one)


@dataclass
class TurnJob:
    job_id: str
    owner: str  # the principal that started it: nobody else can see it
    session_id: str  # the conversation's id as the caller knows it
    sample_rate: int
    created: float = field(default_factory=time.monotonic)
    ended: float | None = None
    transcript: str = ""
    language: str = ""
    confidence: float | None = None
    reply_text: str = ""
    tokens: int = 0
    audio: list[bytes] = field(default_factory=list)  # PCM16 mono at sample_rate, as it came
    timings: dict[str, float] = field(default_factory=dict)  # ms since the request
    error: ApiError | None = None
    handoff: str = ""  # handoff.started/accepted/ended seen during the turn (handoff area)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def done(self) -> bool:
        return self.ended is not None

    def mark(self, stage: str) -> None:
        self.timings.setdefault(stage, round((time.monotonic() - self.created) * 1000, 1))

    async def update(self, audio: bytes = b"", *, end: bool = False) -> None:
        """New audio, or the end: readers waiting on the job look again."""
        async with self.changed:
            if audio:
                self.mark("first_audio")
                self.audio.append(audio)
            if end and self.ended is None:
                self.mark("total")
                self.ended = time.monotonic()
            self.changed.notify_all()

    async def ready(self) -> None:
        """Wait for the first audio or the end, whichever comes first."""
        async with self.changed:
            await self.changed.wait_for(lambda: bool(self.audio) or self.done)

    async def finished(self) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.done)

    async def pcm(self) -> AsyncIterator[bytes]:
        """The reply audio from its start, as it is produced, to its end."""
        index = 0
        while True:
            async with self.changed:
                await self.changed.wait_for(functools.partial(self._beyond, index))
                pieces, done = self.audio[index:], self.done
            for piece in pieces:
                yield piece
            index += len(pieces)
            if done and index >= len(self.audio):
                return

    def _beyond(self, index: int) -> bool:
        return len(self.audio) > index or self.done

    def result(self) -> dict[str, object]:
        """The texts and figures as JSON (no audio)."""
        status = "failed" if self.error else "done" if self.done else "running"
        body: dict[str, object] = {
            "job_id": self.job_id, "session_id": self.session_id, "status": status,
            "transcript": self.transcript, "language": self.language, "confidence": self.confidence,
            "reply_text": self.reply_text.strip(), "tokens": self.tokens,
            "audio_bytes": sum(len(p) for p in self.audio), "sample_rate": self.sample_rate,
            "timings_ms": dict(self.timings)}
        if self.handoff:
            body["handoff"] = self.handoff
        if self.error is not None:
            body["error"] = {"code": self.error.code, "message": self.error.message,
                             "status": self.error.status}
        return body


class TurnJobs:
    """The jobs this gateway holds, each its principal's, kept `ttl_s` after they end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.jobs: dict[str, TurnJob] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def new(self, owner: str, session_id: str) -> TurnJob:
        self.purge()
        if len(self.jobs) >= self.settings.turn_jobs_max:
            raise ApiError(503, "too_many_jobs", "too many turns are held; try again shortly",
                           {"Retry-After": "5"})
        job = TurnJob(f"turn-{uuid.uuid4().hex}", owner, session_id,
                      self.settings.audio_out_sample_rate)
        self.jobs[job.job_id] = job
        return job

    def get(self, job_id: str, owner: str) -> TurnJob | None:
        """The caller's job; None for an unknown, expired or someone else's one (all alike)."""
        self.purge()
        job = self.jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    def purge(self) -> None:
        """Forget jobs past their time; past the cap, the oldest finished ones first."""
        now, ttl = time.monotonic(), self.settings.turn_job_ttl_s
        for job_id in [j.job_id for j in self.jobs.values() if j.ended and now - j.ended > ttl]:
            del self.jobs[job_id]
        finished = sorted((j for j in self.jobs.values() if j.ended), key=lambda j: j.ended or 0)
        for job in finished[: max(0, len(self.jobs) - self.settings.turn_jobs_max + 1)]:
            del self.jobs[job.job_id]

    def run(self, runner: TurnRunner, job: TurnJob, said: TurnInput, principal: Principal) -> None:
        """Run the turn in the background (it goes on if the client that asked leaves)."""
        task = asyncio.get_running_loop().create_task(runner.run(job, said, principal))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class TurnRunner:
    def __init__(self, bridge: Bridge, settings: Settings, guard: Guard) -> None:
        self.bridge, self.settings, self.guard = bridge, settings, guard
        self.jobs = Jobs(bridge, settings)

    async def run(self, job: TurnJob, said: TurnInput, principal: Principal) -> None:
        """The whole turn; whatever goes wrong ends the job with a clear error, never hangs it."""
        try:
            text = said.text or await self._transcribe(job, said)
            job.transcript = job.transcript or text
            await self._converse(job, said, principal)
        except ApiError as exc:
            job.error = exc
        except Exception:
            log.exception("whole turn failed", extra={"session_id": job.job_id})
            job.error = ApiError(500, "turn_failed", "the turn failed; see the gateway log")
        finally:
            await job.update(end=True)

    async def _transcribe(self, job: TurnJob, said: TurnInput) -> str:
        # No language given: the ASR worker's own (as for a voice session), not "auto", whose
        # language detection would cost a second pass over the clip.
        frame = TranscribeJob(pcm=said.pcm, language=said.language)
        result = await self.jobs.first(frame.session_id, await self.jobs.start(frame))
        await self.jobs.end(frame.session_id, finished=True)
        if not isinstance(result, Transcription):
            raise ApiError(502, "bad_worker_reply", f"unexpected {type(result).__name__} from the ASR")
        job.mark("asr_final")
        job.language = result.language
        weights = [max(1, s.end_ms - s.start_ms) for s in result.segments]
        if weights:
            job.confidence = round(sum(s.confidence * w for s, w in zip(result.segments, weights,
                                                                        strict=True)) / sum(weights), 3)
        if not result.text.strip():
            raise ApiError(422, "no_speech", "no speech was heard in the audio")
        return result.text.strip()

    async def _converse(self, job: TurnJob, said: TurnInput, principal: Principal) -> None:
        """The transcript as a typed turn of the caller's conversation; the reply into the job."""
        internal = scoped_session_id(principal.id, job.session_id)
        if internal in self.bridge.connections or internal in self.bridge.jobs:
            raise ApiError(409, "session_in_use", "that session_id is connected or has a turn running")
        if not self.bridge.orchestrator_alive():
            raise ApiError(503, "not_ready", "the assistant is starting; try again", {"Retry-After": "2"})
        await self.guard.open_session(principal)
        queue: asyncio.Queue[EgressMessage] = asyncio.Queue()
        self.bridge.jobs[internal] = queue  # the session's frames, unpaced, to this turn only
        try:
            heard_in = job.language if job.language in languages.codes() else ""  # the ASR's guess
            await self.bridge.send(SessionStart(
                session_id=internal, language=said.language or heard_in or self.settings.language,
                codec="pcm16", sample_rate=16000, principal=principal.id))
            await self.bridge.send(TextIn(session_id=internal, text=job.transcript,
                                          confidence=job.confidence if said.pcm else None))
            await self._collect(job, internal, queue)
        finally:
            self.bridge.jobs.pop(internal, None)
            with contextlib.suppress(Exception):  # the orchestrator may be gone
                await self.bridge.send(SessionEnd(session_id=internal, reason="turn_done"))
            await self.guard.close_session(principal)

    async def _collect(self, job: TurnJob, internal: str, queue: asyncio.Queue[EgressMessage]) -> None:
        """Take the reply's frames until its tts.end (or an error)."""
        while True:
            frame = await self.jobs.next(queue)
            match frame:
                case ErrorEvent() if frame.fatal:  # refused (someone else's id), erased...
                    raise ApiError(409, frame.code, frame.message)
                case ErrorEvent() if frame.code.endswith("_unavailable"):  # the turn was dropped
                    raise job_error(frame)
                case ErrorEvent():  # e.g. an LLM failure: its fallback reply still follows
                    log.warning("whole turn: %s", frame.code, extra={"session_id": job.job_id})
                case TokenChunk() if frame.token:
                    job.mark("first_token")
                    job.tokens += 1
                    job.reply_text += frame.token
                case AudioChunk() if frame.payload:
                    await job.update(frame.payload)
                case AudioChunk() if frame.is_final:  # a phrase has all arrived: it was "heard"
                    await self.bridge.send(PlaybackMark(session_id=internal, turn_id=frame.turn_id,
                                                        text=frame.text))
                case TurnEvent(event="tts.end"):
                    job.reply_text = frame.text or job.reply_text
                    await self.bridge.send(PlaybackMark(session_id=internal, turn_id=frame.turn_id,
                                                        done=True))
                    return
                case HandoffEvent():  # a person takes over: the reply is theirs (or the handover line)
                    job.handoff = frame.event
                case TurnEvent(event="tts.cancel"):
                    raise ApiError(409, "turn_cancelled", "the reply was cancelled")
