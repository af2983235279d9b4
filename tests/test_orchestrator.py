"""The orchestrator over real ZeroMQ sockets, with fake workers and a fake gateway.

Frames go in at the sockets and we assert the frames that come out (pipecat-style), so routing,
phrase streaming, turn completion, history and barge-in are checked without loading a model.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from common import transport
from common.frames import (
    WORKER_KINDS,
    AudioChunk,
    AudioIn,
    Cancel,
    ControlMessage,
    Frame,
    GatewayHeartbeat,
    GenerateRequest,
    PlaybackMark,
    Ready,
    SessionStart,
    StackStatus,
    SynthesizeRequest,
    TokenChunk,
    TranscriptChunk,
    TurnEvent,
    TurnHypothesis,
    VadEvent,
    WorkerKind,
    control_decoder,
    decoder,
    egress_decoder,
    work_decoder,
)
from common.settings import Settings
from common.transport import Plane
from orchestrator.service import Orchestrator
from tests.stack import free_port_range

SID = "0b0f4a52-1d1e-4c1e-9a7e-2b7c4f0d9e11"


class Harness:
    """A fake gateway and one fake instance per worker kind around a real orchestrator, over
    real sockets in a private ipc directory (the default plane)."""

    def __init__(self, plane: Plane, settings: Settings) -> None:
        s = self.settings = settings
        self.plane = plane
        self.ingress = plane.push(s.ingress, server="orchestrator")
        self.results = plane.push(s.results, server="orchestrator")
        self.egress = plane.pull(s.egress, domain="egress")
        self.control = plane.sub(s.control)
        self.work = {kind: plane.pull(s.work_endpoint(kind, 0), domain="work")
                     for kind in WORKER_KINDS}
        self.decoders = {kind: work_decoder(kind) for kind in WORKER_KINDS}

    async def announce(self) -> None:
        for kind in self.work:
            endpoint = self.settings.work_endpoint(kind, 0)
            ready = Ready(kind=kind, instance_id=f"{kind}-fake", endpoint=endpoint)
            await transport.send(self.results, ready)

    async def beat_forever(self) -> None:
        """The fake workers and the fake gateway stay alive (heartbeats) while the test runs."""
        while True:
            await self.announce()
            await transport.send(self.ingress, GatewayHeartbeat(gateway_id=self.settings.gateway_id,
                                                                incarnation="test"))
            await asyncio.sleep(0.1)

    async def recv(self, sock: zmq.asyncio.Socket, dec: msgspec.msgpack.Decoder[Any]) -> Any:
        return dec.decode(await asyncio.wait_for(sock.recv(), 5))

    async def worker_got(self, kind: WorkerKind) -> Any:
        return await self.recv(self.work[kind], self.decoders[kind])

    async def recv_for(self, seconds: float) -> Any:
        return egress_decoder().decode(await asyncio.wait_for(self.egress.recv(), seconds))

    async def client_got(self) -> Any:
        return await self.recv(self.egress, egress_decoder())

    async def result(self, frame: Frame) -> None:
        assert await transport.send(self.results, frame)

    async def start_session(self) -> None:
        """Start once the orchestrator reports every fake worker READY (as gateways wait)."""
        while True:
            status = await self.recv(self.control, control_decoder())
            if isinstance(status, StackStatus) and all(status.ready.get(k) for k in self.work):
                break
        await transport.send(self.ingress, SessionStart(session_id=SID))
        assert isinstance(await self.worker_got("asr"), SessionStart)

    async def speak_reply(self, turn: int, tokens: list[str]) -> GenerateRequest:
        """The user finishes a sentence; the fake LLM answers with `tokens`."""
        await self.result(TranscriptChunk(session_id=SID, turn_id=turn, text=f"question {turn}",
                                          is_final=True))
        got = await self.client_got()
        assert isinstance(got, TranscriptChunk) and got.is_final, got
        request = await self.worker_got("llm")
        await self.answer(request, tokens, final=False)
        return request

    async def answer(self, request: GenerateRequest, tokens: list[str], *, final: bool = True) -> None:
        """The fake LLM streams `tokens` for `request`, then (with `final`) its last chunk."""
        for seq, token in enumerate(tokens):
            await self.result(TokenChunk(session_id=SID, turn_id=request.turn_id, seq=seq,
                                         request_id=request.request_id, token=token))
        if final:
            await self.result(TokenChunk(session_id=SID, turn_id=request.turn_id, seq=len(tokens),
                                         request_id=request.request_id, is_final=True))


def harness_settings(run_dir: Path, **overrides: Any) -> Settings:
    options = {"heartbeat_interval_s": 0.2, "system_prompt": "SYSTEM", **overrides}
    return Settings(_env_file=None, run_dir=run_dir, zmq_base_port=free_port_range(40), **options)


def llm_tokens(text: str) -> list[str]:
    """LLM-like tokens: words with their leading space, punctuation on its own."""
    return re.findall(r" ?\w+|[^\w\s]", text)


def run(scenario: Callable[[Harness], Awaitable[None]], **overrides: Any) -> None:
    async def main(run_dir: Path) -> None:
        settings = harness_settings(run_dir, **overrides)
        orchestrator, stop = Orchestrator(settings), asyncio.Event()
        serving = asyncio.create_task(orchestrator.serve(stop))
        plane = Plane(settings, "test")
        try:
            harness = Harness(plane, settings)
            beating = plane.spawn(harness.beat_forever(), "beat")
            await harness.start_session()
            await scenario(harness)
            assert not beating.done()
        finally:
            stop.set()
            await asyncio.wait_for(serving, 10)  # the orchestrator closes its own plane
            await plane.close()

    with tempfile.TemporaryDirectory(prefix="inzwa-") as run_dir:
        asyncio.run(main(Path(run_dir)))


async def synthesize(h: Harness, request: SynthesizeRequest, frames: int = 2) -> None:
    for seq in range(frames):
        await h.result(AudioChunk(session_id=SID, turn_id=request.turn_id, seq=seq,
                                  request_id=request.request_id, payload=b"\x01\x00" * 320))
    await h.result(AudioChunk(session_id=SID, turn_id=request.turn_id, seq=frames,
                              request_id=request.request_id, is_final=True, text=request.text))


async def drain_client(h: Harness, until: str) -> list[Any]:
    frames = []
    while True:
        frame = await h.client_got()
        frames.append(frame)
        if isinstance(frame, TurnEvent) and frame.event == until:
            return frames


def test_audio_goes_to_the_pinned_asr_instance() -> None:
    async def scenario(h: Harness) -> None:
        await transport.send(h.ingress, AudioIn(session_id=SID, seq=1, pcm=b"\x00\x00" * 320))
        got = await h.worker_got("asr")
        assert isinstance(got, AudioIn) and got.pcm == b"\x00\x00" * 320

    run(scenario)


def test_a_full_turn_streams_phrases_and_audio_in_order() -> None:
    async def scenario(h: Harness) -> None:
        request = await h.speak_reply(1, llm_tokens("Hello there, my good friend. Harare is big."))
        assert [m.role for m in request.messages] == ["system", "user"]
        assert request.messages[0].content == "SYSTEM"
        first = await h.worker_got("tts")
        second = await h.worker_got("tts")  # sent while the LLM is still going
        assert (first.text, second.text) == ("Hello there,", "my good friend.")
        await h.result(TokenChunk(session_id=SID, turn_id=1, request_id=request.request_id,
                                  seq=99, is_final=True))
        await synthesize(h, first)
        third = await h.worker_got("tts")  # the window of two opened again
        assert third.text == "Harare is big."
        await synthesize(h, second)
        await synthesize(h, third)
        frames = await drain_client(h, "tts.end")
        tokens = [f.token for f in frames if isinstance(f, TokenChunk)]
        assert "".join(tokens) == "Hello there, my good friend. Harare is big."
        audio = [f for f in frames if isinstance(f, AudioChunk)]
        assert [a.seq for a in audio] == list(range(1, 10))  # strictly increasing, no gaps
        marks = [a.text for a in audio if a.is_final and not a.payload]  # phrase ends, for pacing
        assert marks == ["Hello there,", "my good friend.", "Harare is big."]
        kinds = [f.event for f in frames if isinstance(f, TurnEvent)]
        assert kinds == ["tts.start", "tts.end"]

    run(scenario)


def test_history_carries_earlier_turns() -> None:
    async def scenario(h: Harness) -> None:
        request = await h.speak_reply(1, ["Fine", " thanks", "."])
        await h.result(TokenChunk(session_id=SID, turn_id=1, request_id=request.request_id,
                                  seq=9, is_final=True))
        await synthesize(h, await h.worker_got("tts"))
        await drain_client(h, "tts.end")
        await transport.send(h.ingress, PlaybackMark(session_id=SID, turn_id=1, done=True))
        second = await h.speak_reply(2, ["Ok", "."])
        contents = [(m.role, m.content) for m in second.messages]
        assert contents == [("system", "SYSTEM"), ("user", "question 1"),
                            ("assistant", "Fine thanks."), ("user", "question 2")]

    run(scenario)


def test_speech_during_the_reply_cancels_it_and_keeps_only_what_was_spoken() -> None:
    async def scenario(h: Harness) -> None:
        request = await h.speak_reply(1, llm_tokens("One two. Three four five. Six seven eight."))
        first = await h.worker_got("tts")
        await synthesize(h, first)
        await transport.send(h.ingress, PlaybackMark(session_id=SID, turn_id=1, text=first.text))
        await asyncio.sleep(0.3)  # the mark and the VAD event travel on different sockets
        await h.result(VadEvent(session_id=SID, turn_id=2, event="speech_start", at_ms=5000))
        cancel = await h.recv(h.control, decoder(ControlMessage))
        while not isinstance(cancel, Cancel):
            cancel = await h.recv(h.control, decoder(ControlMessage))
        assert (cancel.session_id, cancel.turn_id) == (SID, request.turn_id)
        frames = await drain_client(h, "tts.cancel")
        assert any(isinstance(f, AudioChunk) for f in frames)
        # late audio of the cancelled turn is not forwarded
        await synthesize(h, await h.worker_got("tts"))
        nxt = await h.speak_reply(2, ["Yes", "."])
        assert ("assistant", "One two.") in [(m.role, m.content) for m in nxt.messages]
        stray = [f for f in await drain_client_until_token(h) if isinstance(f, AudioChunk)]
        assert stray == []

    run(scenario)


async def drain_client_until_token(h: Harness) -> list[Any]:
    frames = []
    while True:
        frame = await h.client_got()
        frames.append(frame)
        if isinstance(frame, TokenChunk):
            return frames


async def client_frames_for(h: Harness, seconds: float) -> list[Any]:
    frames = []
    try:
        while True:
            frames.append(await h.recv_for(seconds))
    except TimeoutError:
        return frames


def test_an_early_reply_is_held_until_the_final_confirms_it() -> None:
    async def scenario(h: Harness) -> None:
        await h.result(TurnHypothesis(session_id=SID, turn_id=1, text="Will it rain?"))
        request = await h.worker_got("llm")
        await h.answer(request, llm_tokens("Maybe, take an umbrella."))
        await synthesize(h, await h.worker_got("tts"))
        assert await client_frames_for(h, 0.5) == []  # nothing reaches the client yet
        await h.result(TranscriptChunk(session_id=SID, turn_id=1, text="will it rain", is_final=True))
        frames = await client_frames_for(h, 0.5)
        assert isinstance(frames[0], TranscriptChunk) and frames[0].is_final
        assert "".join(f.token for f in frames if isinstance(f, TokenChunk)) == "Maybe, take an umbrella."
        assert any(isinstance(f, AudioChunk) and f.payload for f in frames)
        assert [f.event for f in frames if isinstance(f, TurnEvent)] == ["tts.start", "tts.end"]

    run(scenario)


def test_an_early_reply_leaves_no_trace_when_the_speaker_goes_on() -> None:
    async def scenario(h: Harness) -> None:
        await h.result(TurnHypothesis(session_id=SID, turn_id=1, text="Tell me"))
        speculative = await h.worker_got("llm")
        await h.result(TokenChunk(session_id=SID, turn_id=speculative.turn_id, seq=0,
                                  request_id=speculative.request_id, token="Sure"))
        await h.result(VadEvent(session_id=SID, turn_id=1, event="speech_resume"))
        cancel = await h.recv(h.control, decoder(ControlMessage))
        while not isinstance(cancel, Cancel):
            cancel = await h.recv(h.control, decoder(ControlMessage))
        assert cancel.turn_id == speculative.turn_id
        request = await h.speak_reply(1, llm_tokens("A story."))
        assert request.turn_id != speculative.turn_id
        assert [m.content for m in request.messages] == ["SYSTEM", "question 1"]  # no trace
        frames = await client_frames_for(h, 0.5)
        assert "Sure" not in [f.token for f in frames if isinstance(f, TokenChunk)]

    run(scenario)


def test_a_silent_llm_gets_a_spoken_fallback_and_shorter_replies_after() -> None:
    async def scenario(h: Harness) -> None:
        request = await h.speak_reply(1, [])  # the LLM never answers
        assert request.max_new_tokens == 80
        cancel = await h.recv(h.control, decoder(ControlMessage))
        while not isinstance(cancel, Cancel):
            cancel = await h.recv(h.control, decoder(ControlMessage))
        assert cancel.request_id == request.request_id  # only the generation, not the turn
        first, second = await h.worker_got("tts"), await h.worker_got("tts")
        assert first.text.startswith("Sorry")
        await synthesize(h, first)
        await synthesize(h, second)
        frames = await drain_client(h, "tts.end")
        assert frames[-1].text == f"{first.text} {second.text}"
        await transport.send(h.ingress, PlaybackMark(session_id=SID, turn_id=1, done=True))
        again = await h.speak_reply(2, ["Ok", "."])
        assert again.max_new_tokens == 40

    run(scenario, llm_timeout_s=0.6)


def test_a_stalled_asr_is_reset_with_the_last_500_ms() -> None:
    async def scenario(h: Harness) -> None:
        await h.result(VadEvent(session_id=SID, turn_id=1, event="speech_start"))
        started = asyncio.get_running_loop().time()
        while asyncio.get_running_loop().time() - started < 20:  # speech goes on, ASR is silent
            await transport.send(h.ingress, AudioIn(session_id=SID, seq=1, pcm=b"\1" * 640))
            got = await h.worker_got("asr")
            if isinstance(got, SessionStart):
                break
            assert isinstance(got, AudioIn)
            await asyncio.sleep(0.01)
        assert isinstance(got, SessionStart)  # a start for a known session: a reset
        assert asyncio.get_running_loop().time() - started >= 0.8
        assert len(got.pcm) == 500 * 32  # with the last 500 ms, in the same message
        assert got.offset_ms > 0  # the replayed tail keeps its place in the session

    run(scenario, asr_stall_s=0.8)
