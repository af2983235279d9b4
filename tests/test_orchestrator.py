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
    Frame,
    GatewayHeartbeat,
    GenerateRequest,
    Ready,
    SessionStart,
    StackStatus,
    SynthesizeRequest,
    TokenChunk,
    TranscriptChunk,
    TurnEvent,
    VadEvent,
    WorkerKind,
    control_decoder,
    egress_decoder,
    work_decoder,
)
from common.metrics import DROPPED_FRAMES
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


def test_a_dead_gateway_never_stalls_the_orchestrator() -> None:
    """A gateway that heartbeats but whose egress nobody reads (dead, or hung): the frames of
    its session pile up only in its own queue and are dropped; the other gateway's turn and
    every worker's heartbeats go on being handled on time."""
    dead = "7e57dead-0000-4000-8000-000000000001"

    async def scenario(h: Harness) -> None:
        async def dead_gateway_beats() -> None:
            while True:
                await transport.send(h.ingress, GatewayHeartbeat(gateway_id="gw-dead", incarnation="d"))
                await asyncio.sleep(0.1)

        beating = h.plane.spawn(dead_gateway_beats(), "dead-beats")
        before = DROPPED_FRAMES.labels("peer_unreachable")._value.get()
        await transport.send(h.ingress, SessionStart(session_id=dead, gateway_id="gw-dead"))
        assert isinstance(await h.worker_got("asr"), SessionStart)
        await h.result(TranscriptChunk(session_id=dead, turn_id=1, text="hello", is_final=True))
        flood = await h.worker_got("llm")
        for seq in range(200):  # 200 frames for the dead gateway (2 s each, were sends awaited)
            await h.result(TokenChunk(session_id=dead, turn_id=1, seq=seq,
                                      request_id=flood.request_id, token=" la"))
        request = await h.speak_reply(1, llm_tokens("Still here."))  # the live gateway's turn
        await h.result(TokenChunk(session_id=SID, turn_id=1, request_id=request.request_id,
                                  seq=99, is_final=True))
        phrase = await h.worker_got("tts")
        while phrase.session_id != SID:  # the dead session's reply is being synthesized too
            phrase = await h.worker_got("tts")
        await synthesize(h, phrase)
        frames = await drain_client(h, "tts.end")
        assert "".join(f.token for f in frames if isinstance(f, TokenChunk)) == "Still here."
        status = await h.recv(h.control, control_decoder())
        while not isinstance(status, StackStatus):
            status = await h.recv(h.control, control_decoder())
        assert status.ready == {"asr": 1, "llm": 1, "tts": 1}  # heartbeats were handled
        for _ in range(50):  # the dead gateway's sender gives up after its patience (1 s)
            if DROPPED_FRAMES.labels("peer_unreachable")._value.get() > before:
                break
            await asyncio.sleep(0.1)
        assert DROPPED_FRAMES.labels("peer_unreachable")._value.get() > before
        beating.cancel()

    run(scenario)
