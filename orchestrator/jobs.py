"""REST jobs: one request (a chat, a text to speak, a recording), one worker, results streamed.

A job has no dialogue and no turn-taking: the orchestrator hands it to the least-loaded READY
instance of its kind and forwards every result to the gateway that asked. The job id is both the
frames' `session_id` and `request_id`, so results route like a session's and a worker's cancel
memory works unchanged. When a worker is lost the job is replayed on another instance: a chat
continues after the text already sent; speech and transcription start over only if nothing
was sent yet (otherwise the client would hear or read something twice), else they fail cleanly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from common.frames import (
    AudioChunk,
    Cancel,
    ChatJob,
    ChatMessage,
    Envelope,
    ErrorEvent,
    Frame,
    GenerateRequest,
    SpeakJob,
    SynthesizeRequest,
    TokenChunk,
    TranscribeJob,
    TranscribeRequest,
    Transcription,
    WorkerError,
    WorkerKind,
)
from common.languages import registry as languages
from common.metrics import REPLAYS
from common.settings import Settings
from orchestrator.registry import Instance, WorkerRegistry
from orchestrator.response_cache import ResponseCache

log = logging.getLogger(__name__)

JobFrame = ChatJob | SpeakJob | TranscribeJob
JobResult = TokenChunk | AudioChunk | Transcription | WorkerError
ToGateway = Callable[[str, Frame], Awaitable[None]]  # (gateway_id, frame)


@dataclass
class Job:
    job_id: str
    kind: WorkerKind  # the worker kind that serves it
    gateway_id: str  # the gateway that asked: results go there, and only it may cancel
    work: GenerateRequest | SynthesizeRequest | TranscribeRequest
    deadline: float
    instance_id: str = ""
    sent: int = 0  # results forwarded to the gateway
    text: str = ""  # a chat's tokens forwarded so far: a replay continues after them
    language: str = ""
    principal: str = ""  # a chat's caller (the response cache keys personal prompts with it)
    cache_key: str = ""  # a chat the response cache keeps once it ends ("" : not cached)
    tokens: list[str] = field(default_factory=list)  # a chat's tokens as forwarded, for the cache


def work_for(frame: JobFrame, settings: Settings) -> tuple[WorkerKind, GenerateRequest | SynthesizeRequest |
                                                         TranscribeRequest]:
    """The worker request that serves a job, with the job id as its session and request id."""
    ids: Envelope = {"session_id": frame.session_id, "turn_id": 0, "request_id": frame.session_id}
    match frame:
        case ChatJob():
            prompt = settings.system_prompt or languages.get(frame.language).system_prompt
            messages = with_server_prompt(prompt, frame.messages)
            return "llm", GenerateRequest(**ids, messages=messages, language=frame.language,
                                          max_new_tokens=frame.max_new_tokens)
        case SpeakJob():
            return "tts", SynthesizeRequest(**ids, text=frame.text, language=frame.language,
                                            voice=frame.voice, sample_rate=frame.sample_rate,
                                            speed=frame.speed)
        case TranscribeJob():
            return "asr", TranscribeRequest(**ids, pcm=frame.pcm, language=frame.language)


def with_server_prompt(prompt: str, messages: list[ChatMessage]) -> list[ChatMessage]:
    """The server's system prompt first, always; a caller's system messages are appended below
    it in the same system message (chat templates take one, at the start), never replacing it."""
    caller = [m.content for m in messages if m.role == "system" and m.content.strip()]
    system = "\n\n".join([prompt, *caller])
    return [ChatMessage("system", system), *(m for m in messages if m.role != "system")]


class Jobs:
    def __init__(self, settings: Settings, registry: WorkerRegistry, to_gateway: ToGateway,
                 publish: Callable[[Frame], Awaitable[None]]) -> None:
        self.settings = settings
        self.registry = registry
        self._to_gateway = to_gateway
        self._publish = publish
        self.active: dict[str, Job] = {}
        self.responses = ResponseCache(settings)

    def owns(self, session_id: str) -> bool:
        return session_id in self.active

    async def submit(self, frame: JobFrame, gateway_id: str) -> None:
        if frame.session_id in self.active:
            return  # a job id is the asking gateway's, once (a repeat cannot take it over)
        kind, work = work_for(frame, self.settings)
        job = Job(frame.session_id, kind, gateway_id, work, self._deadline(),
                  language=frame.language, principal=getattr(frame, "principal", ""))
        self.active[job.job_id] = job
        # The safety filter sees what the model would see: every user and caller system message.
        if isinstance(frame, ChatJob) and languages.get(frame.language).blocks_any_input(
            m.content for m in frame.messages if m.role in ("user", "system")
        ):
            await self._refuse(job)  # a polite refusal, no LLM call
            return
        await self._dispatch(job)

    async def _dispatch(self, job: Job) -> None:
        """To the least-loaded instance; with none READY the job waits (until its deadline)."""
        instance = self.registry.pick(job.kind)
        job.instance_id = ""
        if instance is None:
            return
        if await self._cached(job, instance):
            return
        if self.registry.send(instance, job.work):
            job.instance_id = instance.instance_id
            instance.sessions += 1

    async def _cached(self, job: Job, instance: Instance) -> bool:
        """A deterministic chat answered before on this model: the same tokens, no LLM call.
        (A miss keeps the key: the reply is stored when it ends.)"""
        if not isinstance(job.work, GenerateRequest) or job.sent:
            return False
        job.cache_key = self.responses.key(job.work, instance, job.principal)
        tokens = self.responses.get(job.cache_key)
        if tokens is None:
            return False
        job.cache_key = ""
        for index, token in enumerate(tokens):
            await self._forward(job, TokenChunk(session_id=job.job_id, request_id=job.job_id,
                                                token=token, is_final=index == len(tokens) - 1))
        self._finish(job)
        return True

    async def on_result(self, frame: JobResult) -> None:
        job = self.active.get(frame.session_id)
        if job is None:
            return
        job.deadline = self._deadline()
        if isinstance(frame, WorkerError):
            await self._fail(job, frame.code or f"{job.kind}_error", frame.message)
            return
        if isinstance(frame, TokenChunk) and await self._blocked_output(job, frame):
            return
        await self._forward(job, frame)
        if isinstance(frame, TokenChunk) and frame.is_final:
            self.responses.put(job.cache_key, job.tokens)  # (only a deterministic chat has a key)
        if isinstance(frame, Transcription) or frame.is_final:
            self._finish(job)

    async def _forward(self, job: Job, frame: JobResult) -> None:
        if isinstance(frame, TokenChunk):
            frame.seq = job.sent  # a replay restarts its worker's numbering: keep the client's
            job.text += frame.token
            job.tokens.append(frame.token)
        job.sent += 1
        await self._to_gateway(job.gateway_id, frame)

    async def _blocked_output(self, job: Job, token: TokenChunk) -> bool:
        """The output safety filter: a reply the pack forbids stops there with its refusal."""
        pack = languages.get(job.language)
        if not pack.blocks_output(job.text + token.token):
            return False
        await self._publish(Cancel(session_id=job.job_id, turn_id=-1))
        await self._refuse(job)
        return True

    async def _refuse(self, job: Job) -> None:
        refusal = languages.get(job.language).fallback("cannot_help")
        for token, final in ((refusal, False), ("", True)):
            await self._forward(job, TokenChunk(session_id=job.job_id, request_id=job.job_id,
                                                token=token, is_final=final))
        self._finish(job)

    async def cancel(self, job_id: str, gateway_id: str = "") -> None:
        """The client left: stop the worker, forget the job (only the asking gateway may)."""
        job = self.active.get(job_id)
        if job is None or gateway_id not in ("", job.gateway_id):
            return
        self._finish(job)
        await self._publish(Cancel(session_id=job_id, turn_id=-1))

    async def cancel_gateway(self, gateway_id: str) -> None:
        """A gateway is gone: nobody waits for its jobs."""
        for job in [j for j in self.active.values() if j.gateway_id == gateway_id]:
            await self.cancel(job.job_id)

    async def lost(self, kind: WorkerKind, instance_id: str) -> None:
        for job in [j for j in self.active.values() if j.kind == kind and j.instance_id == instance_id]:
            if isinstance(job.work, GenerateRequest):
                job.work.prefix = job.text  # continue the reply after what was sent
                job.cache_key = ""  # (another instance finishes it: not one model's reply)
            elif job.sent:
                await self._fail(job, f"{kind}_lost", "the worker serving this request stopped")
                continue
            REPLAYS.labels(kind).inc()
            log.warning("job replayed", extra={"session_id": job.job_id, "kind": kind})
            await self._dispatch(job)

    async def on_ready(self, kind: WorkerKind) -> None:
        for job in [j for j in self.active.values() if j.kind == kind and not j.instance_id]:
            await self._dispatch(job)

    async def expire(self) -> None:
        now = time.monotonic()
        for job in [j for j in self.active.values() if j.deadline < now]:
            await self._publish(Cancel(session_id=job.job_id, turn_id=-1))
            code = "timeout" if job.instance_id else f"{job.kind}_unavailable"
            await self._fail(job, code, f"no answer from the {job.kind} worker in time")

    async def _fail(self, job: Job, code: str, message: str) -> None:
        self._finish(job)
        await self._to_gateway(job.gateway_id, ErrorEvent(session_id=job.job_id, request_id=job.job_id,
                                                        code=code, message=message, fatal=True))

    def _finish(self, job: Job) -> None:
        self.active.pop(job.job_id, None)
        instance = self.registry.get(job.instance_id)
        if instance is not None:
            instance.sessions = max(0, instance.sessions - 1)

    def _deadline(self) -> float:
        return time.monotonic() + self.settings.request_timeout_s
