"""REST jobs and admin requests through a real orchestrator, with fake workers over ZeroMQ.

A job goes in at the ingress socket as a gateway would send it; we assert what the fake worker
is asked and what comes back out to the fake gateway.
"""

from __future__ import annotations

import asyncio
from typing import Any

from common import transport
from common.frames import (
    WORKER_KINDS,
    AdminReply,
    AdminRequest,
    AudioChunk,
    Cancel,
    ChatJob,
    ChatMessage,
    ControlMessage,
    ErrorEvent,
    GenerateRequest,
    JobCancel,
    Leaving,
    Segment,
    SpeakJob,
    SynthesizeRequest,
    TokenChunk,
    TranscribeJob,
    TranscribeRequest,
    Transcription,
    WarmupDone,
    WarmupRequest,
    WorkerError,
    decoder,
)
from tests.test_orchestrator import Harness, run

JOB = "job-0123456789abcdef"


def job(frame: Any, h: Harness) -> Any:
    frame.session_id = frame.request_id = JOB
    frame.reply_to = h.settings.egress
    return frame


async def submit(h: Harness, frame: Any) -> None:
    await transport.send(h.ingress, job(frame, h))


async def tokens(h: Harness, request: GenerateRequest, words: list[str], *, final: bool = True) -> None:
    for seq, word in enumerate(words):
        await h.result(TokenChunk(session_id=JOB, request_id=JOB, seq=seq, token=word))
    if final:
        await h.result(TokenChunk(session_id=JOB, request_id=JOB, seq=len(words), is_final=True))


async def gateway_tokens(h: Harness) -> list[TokenChunk]:
    got: list[TokenChunk] = []
    while not got or not got[-1].is_final:
        frame = await h.client_got()
        assert isinstance(frame, TokenChunk) and frame.session_id == JOB, frame
        got.append(frame)
    return got


async def cancels(h: Harness, seconds: float = 2.0) -> list[Cancel]:
    found: list[Cancel] = []
    control = decoder(ControlMessage)
    try:
        while not found:
            message = control.decode(await _recv(h, seconds))
            if isinstance(message, Cancel):
                found.append(message)
    except TimeoutError:
        pass
    return found


async def _recv(h: Harness, seconds: float) -> bytes:
    return await asyncio.wait_for(h.control.recv(), seconds)


def test_a_chat_job_is_served_by_the_llm_with_the_system_prompt() -> None:
    async def scenario(h: Harness) -> None:
        await submit(h, ChatJob(messages=[ChatMessage("user", "hello")], max_new_tokens=20))
        request = await h.worker_got("llm")
        assert isinstance(request, GenerateRequest) and request.session_id == JOB
        assert [m.role for m in request.messages] == ["system", "user"]
        assert request.messages[0].content == "SYSTEM" and request.max_new_tokens == 20
        await tokens(h, request, ["Hi", " there", "."])
        got = await gateway_tokens(h)
        assert "".join(t.token for t in got) == "Hi there." and [t.seq for t in got] == [0, 1, 2, 3]

    run(scenario)


def test_a_blocked_chat_gets_the_refusal_without_an_llm_call() -> None:
    async def scenario(h: Harness) -> None:
        await submit(h, ChatJob(messages=[ChatMessage("user", "how do I make a bomb")], language="en"))
        got = await gateway_tokens(h)
        assert "".join(t.token for t in got) == "Sorry, I cannot help with that."
        try:
            await h.worker_got("llm")
            raise AssertionError("the LLM was asked")
        except TimeoutError:
            pass

    run(scenario)


def test_a_chat_continues_on_a_new_llm_after_its_worker_is_lost() -> None:
    async def scenario(h: Harness) -> None:
        await submit(h, ChatJob(messages=[ChatMessage("user", "count")]))
        request = await h.worker_got("llm")
        await tokens(h, request, ["One", ","], final=False)
        await h.result(Leaving(kind="llm", instance_id="llm-fake", gone=True))
        replay = await h.worker_got("llm")  # the heartbeat brings the instance back
        assert isinstance(replay, GenerateRequest) and replay.prefix == "One,"
        await tokens(h, replay, [" two"])
        got = await gateway_tokens(h)
        assert "".join(t.token for t in got) == "One, two"
        assert [t.seq for t in got] == [0, 1, 2, 3]  # one numbering for the client across the replay

    run(scenario)


def test_a_speech_job_streams_audio_to_its_final_chunk() -> None:
    async def scenario(h: Harness) -> None:
        await submit(h, SpeakJob(text="Hello.", sample_rate=16000))
        request = await h.worker_got("tts")
        assert isinstance(request, SynthesizeRequest) and request.text == "Hello."
        for seq in range(3):
            await h.result(AudioChunk(session_id=JOB, request_id=JOB, seq=seq, payload=b"\x01\x00" * 320))
        await h.result(AudioChunk(session_id=JOB, request_id=JOB, seq=3, is_final=True))
        frames = [await h.client_got() for _ in range(4)]
        assert [len(f.payload) for f in frames] == [640, 640, 640, 0] and frames[-1].is_final

    run(scenario)


def test_a_transcription_job_returns_the_asr_answer() -> None:
    async def scenario(h: Harness) -> None:
        await submit(h, TranscribeJob(pcm=b"\x00\x00" * 1600, language="en"))
        request = await h.worker_got("asr")
        assert isinstance(request, TranscribeRequest) and len(request.pcm) == 3200
        answer = Transcription(session_id=JOB, request_id=JOB, text="hi", language="en",
                               segments=[Segment(0, 100, "hi", 0.9)])
        await h.result(answer)
        got = await h.client_got()
        assert isinstance(got, Transcription) and got.text == "hi" and got.segments[0].end_ms == 100

    run(scenario)


def test_a_worker_error_ends_the_job_with_an_error() -> None:
    async def scenario(h: Harness) -> None:
        await submit(h, TranscribeJob(pcm=b"\x00\x00" * 1600))
        await h.worker_got("asr")
        await h.result(WorkerError(session_id=JOB, request_id=JOB, kind="asr", code="asr_failed",
                                   message="transcription failed"))
        got = await h.client_got()
        assert isinstance(got, ErrorEvent) and got.code == "asr_failed" and got.fatal

    run(scenario)


def test_an_unanswered_job_times_out_and_its_work_is_cancelled() -> None:
    async def scenario(h: Harness) -> None:
        await submit(h, SpeakJob(text="Hello."))
        await h.worker_got("tts")
        got = await h.recv_for(5)
        assert isinstance(got, ErrorEvent) and got.code == "timeout"
        assert any(c.session_id == JOB and c.turn_id == -1 for c in await cancels(h))

    run(scenario, request_timeout_s=0.5)


def test_a_job_its_client_left_is_cancelled_at_the_workers() -> None:
    async def scenario(h: Harness) -> None:
        await submit(h, ChatJob(messages=[ChatMessage("user", "long story")]))
        await h.worker_got("llm")
        await transport.send(h.ingress, JobCancel(session_id=JOB))
        assert any(c.session_id == JOB and c.turn_id == -1 for c in await cancels(h))

    run(scenario)


def test_models_lists_every_ready_instance() -> None:
    async def scenario(h: Harness) -> None:
        await transport.send(h.ingress, AdminRequest(request_id="r1", action="models",
                                                     reply_to=h.settings.egress))
        reply = await h.client_got()
        assert isinstance(reply, AdminReply) and reply.request_id == "r1" and reply.missing == []
        assert {m.role: m.instances for m in reply.models} == {
            "asr": ["asr-fake"], "llm": ["llm-fake"], "tts": ["tts-fake"]}

    run(scenario)


def test_warmup_asks_every_instance_and_reports_their_times() -> None:
    async def scenario(h: Harness) -> None:
        await transport.send(h.ingress, AdminRequest(request_id="w1", action="warmup",
                                                     reply_to=h.settings.egress))
        for kind in WORKER_KINDS:
            asked = await h.worker_got(kind)
            assert isinstance(asked, WarmupRequest) and asked.request_id == "w1"
            await h.result(WarmupDone(request_id="w1", kind=kind, instance_id=f"{kind}-fake",
                                      elapsed_ms=12.5))
        reply = await h.client_got()
        assert isinstance(reply, AdminReply) and reply.missing == []
        assert all(m.warmup_ms == {f"{m.role}-fake": 12.5} for m in reply.models)

    run(scenario)


def test_a_warmup_that_an_instance_does_not_answer_names_it_missing() -> None:
    async def scenario(h: Harness) -> None:
        await transport.send(h.ingress, AdminRequest(request_id="w2", action="warmup",
                                                     reply_to=h.settings.egress))
        for kind in ("asr", "llm"):
            await h.worker_got(kind)
            await h.result(WarmupDone(request_id="w2", kind=kind, instance_id=f"{kind}-fake"))
        reply = await h.recv_for(5)
        assert isinstance(reply, AdminReply) and reply.missing == ["tts"]

    run(scenario, request_timeout_s=0.5)
