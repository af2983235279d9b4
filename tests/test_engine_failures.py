"""Engine failures reach the consumer as values, never as a hang (issue 9).

Real worker objects (LlmWorker, TtsWorker, AsrWorker) run in process with engines that fail at
every stage: when the stream is started (the old vLLM `prefix=` TypeError), before the first
piece, mid-stream, in the warm-up, or that never answer. What the worker sends is recorded by
`RecordingRuntime`, the socket side of `common.worker.WorkerRuntime` (emit, cancels, busy).
Every wait is bounded: a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import numpy as np
import pytest

from asr_worker.engines.fake import FakeAsr
from asr_worker.worker import AsrWorker
from common.frames import (
    AudioChunk,
    AudioIn,
    ChatMessage,
    EndTurn,
    Frame,
    GenerateRequest,
    SessionStart,
    SynthesizeRequest,
    TokenChunk,
    WarmupDone,
    WarmupRequest,
    WorkerError,
)
from common.models import UnknownEngine
from common.settings import Settings
from llm_worker.engines.fake import FakeLlm
from llm_worker.worker import LlmWorker
from tts_worker.engines.fake import FakeTts
from tts_worker.worker import TtsWorker

BOUND_S = 10.0  # anything that takes longer than this is a hang


class RecordingRuntime:
    """What a worker uses of `WorkerRuntime`, recording every frame it emits."""

    def __init__(self, kind: str = "llm") -> None:
        self.kind = kind
        self.instance_id = f"{kind}-test"
        self.busy = 0
        self.frames: list[Frame] = []
        self.cancelled: set[tuple[str, int]] = set()
        self._arrived = asyncio.Event()

    async def emit(self, frame: Frame) -> bool:
        self.frames.append(frame)
        self._arrived.set()
        return True

    def is_cancelled(self, session_id: str, turn_id: int, request_id: str = "") -> bool:
        return (session_id, turn_id) in self.cancelled or (session_id, -1) in self.cancelled

    async def warm_up(self, request: WarmupRequest, warm: Callable[[], None]) -> None:
        error = ""
        try:
            await asyncio.to_thread(warm)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        await self.emit(WarmupDone(session_id=request.session_id, request_id=request.request_id,
                                   error=error))

    def of(self, kind: type[Frame], request_id: str | None = None) -> list[Any]:
        return [f for f in self.frames
                if isinstance(f, kind) and (request_id is None or f.request_id == request_id)]

    async def wait_for(self, done: Callable[[], bool], timeout_s: float = BOUND_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"nothing came within {timeout_s} s: {self.frames}"
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.1))

    def final_of(self, request_id: str) -> Callable[[], bool]:
        return lambda: any(getattr(f, "is_final", False) for f in self.frames if f.request_id == request_id)


def run(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(main, 3 * BOUND_S))


def request(rid: str = "r1", *, max_new_tokens: int = 0, prefix: str = "", turn: int = 1) -> GenerateRequest:
    return GenerateRequest(session_id="s1", turn_id=turn, request_id=rid, max_new_tokens=max_new_tokens,
                           messages=[ChatMessage("user", "what is the capital of zimbabwe")], prefix=prefix)


async def start_llm(
    engine: Any, settings: Settings | None = None
) -> tuple[LlmWorker, RecordingRuntime, asyncio.Task[None]]:
    worker = LlmWorker(engine, settings or Settings(_env_file=None))
    runtime = RecordingRuntime("llm")
    worker.runtime = runtime  # type: ignore[assignment]
    return worker, runtime, asyncio.create_task(worker.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# --- LLM engines that fail ---------------------------------------------------------------------------


class NoPrefixEngine(FakeLlm):
    """The old vLLM engine's shape: `stream` has no `prefix`, so the call itself raises TypeError."""

    def stream(self, messages: Any, *, max_new_tokens: int) -> AsyncIterator[str]:  # type: ignore[override]
        return super().stream(messages, max_new_tokens=max_new_tokens)


class FailingEngine(FakeLlm):
    """Streams `good` pieces, then raises; `hang` never answers after them instead."""

    def __init__(self, good: int, *, hang: bool = False) -> None:
        super().__init__("one two three four five six seven eight", tokens_per_s=500, concurrency=1)
        self.good, self.hang = good, hang
        self.closed = 0

    async def warm(self, system_prompt: str = "") -> None:
        raise RuntimeError("engine dead")

    async def stream(self, messages: Any, *, max_new_tokens: int, prefix: str = "") -> AsyncIterator[str]:
        try:
            count = 0
            async for piece in super().stream(messages, max_new_tokens=max_new_tokens, prefix=prefix):
                if count == self.good:
                    break
                count += 1
                yield piece
            if self.hang:
                await asyncio.Event().wait()
            raise RuntimeError("engine dead")
        finally:
            self.closed += 1


@pytest.mark.parametrize(("engine", "pieces"), [
    (NoPrefixEngine(), 0),  # the stream cannot even be started
    (FailingEngine(0), 0),  # fails before its first piece
    (FailingEngine(3), 3),  # fails mid-reply
])
def test_an_llm_engine_that_fails_closes_the_request_with_an_error(engine: Any, pieces: int) -> None:
    async def main() -> None:
        worker, runtime, serving = await start_llm(engine)
        await worker.handle(request())
        await runtime.wait_for(runtime.final_of("r1"))
        tokens = runtime.of(TokenChunk, "r1")
        assert [t.is_final for t in tokens] == [False] * pieces + [True]
        assert [t.seq for t in tokens] == list(range(pieces + 1))  # no gap before the final
        errors = runtime.of(WorkerError, "r1")
        assert len(errors) == 1 and errors[0].code == "llm_failed" and errors[0].kind == "llm"
        assert runtime.frames.index(errors[0]) < runtime.frames.index(tokens[-1])  # error, then close
        # the worker goes on serving: the next request is answered normally
        worker.engine = FakeLlm("fine thanks", tokens_per_s=500)
        await worker.handle(request("r2"))
        await runtime.wait_for(runtime.final_of("r2"))
        assert "".join(t.token for t in runtime.of(TokenChunk, "r2")) == "fine thanks"
        await stop(serving)

    run(main())


def test_a_failing_warm_up_is_reported_not_fatal() -> None:
    async def main() -> None:
        worker, runtime, serving = await start_llm(FailingEngine(0))
        await worker.handle(WarmupRequest(session_id="w", request_id="w1"))
        await runtime.wait_for(lambda: bool(runtime.of(WarmupDone)))
        assert "engine dead" in runtime.of(WarmupDone)[0].error
        await stop(serving)

    run(main())


def test_an_engine_that_stops_answering_is_cancelled_and_its_stream_closed() -> None:
    async def main() -> None:
        engine = FailingEngine(2, hang=True)
        worker, runtime, serving = await start_llm(engine)
        await worker.handle(request())
        await runtime.wait_for(lambda: len(runtime.of(TokenChunk, "r1")) == 2)
        runtime.cancelled.add(("s1", 1))  # the orchestrator's cancel (barge-in, or its timeout)
        await runtime.wait_for(runtime.final_of("r1"))
        assert engine.closed == 1  # the engine's stream was closed, not left hanging
        assert runtime.of(WorkerError) == []  # a cancel is not an error
        await stop(serving)

    run(main())


def test_an_unknown_engine_name_is_a_clear_error() -> None:
    from asr_worker.registry import load_engine as load_asr
    from llm_worker.registry import load_engine as load_llm
    from tts_worker.registry import load_engine as load_tts

    for load, field, known in ((load_asr, "asr_engine", "fake, faster-whisper, openai"),
                               (load_llm, "llm_engine", "fake, llama-cpp, llama-cpp-batched, openai, vllm"),
                               (load_tts, "tts_engine", "fake, openai, piper-onnx")):
        settings = Settings(_env_file=None, **{field: "nope"})
        with pytest.raises(UnknownEngine, match=f"unknown .* engine 'nope'; known .* engines: {known}$"):
            load(settings)  # type: ignore[operator]


# --- TTS and ASR engines that fail ---------------------------------------------------------------


class BrokenVoice(FakeTts):
    def __init__(self, good_frames: int) -> None:
        super().__init__(ms_per_char=60, rtf=0.0)
        self.good_frames = good_frames

    def synthesize_stream(self, text: str, *, sample_rate: int = 16000, frame_ms: int = 20,
                          language: str = "") -> Iterator[bytes]:
        frames = super().synthesize_stream(text, sample_rate=sample_rate, frame_ms=frame_ms)
        for index, frame in enumerate(frames):
            if index == self.good_frames:
                raise RuntimeError("voice dead")
            yield frame


@pytest.mark.parametrize("good_frames", [0, 5])
def test_a_tts_engine_that_fails_closes_the_phrase_with_an_error(good_frames: int) -> None:
    async def main() -> None:
        worker = TtsWorker(BrokenVoice(good_frames), frame_ms=20)
        runtime = RecordingRuntime("tts")
        worker.runtime = runtime  # type: ignore[assignment]
        serving = asyncio.create_task(worker.run())
        await worker.handle(SynthesizeRequest(session_id="s1", turn_id=1, request_id="p1",
                                              text="Hello there, how are you?"))
        await runtime.wait_for(runtime.final_of("p1"))
        chunks = runtime.of(AudioChunk, "p1")
        assert len([c for c in chunks if c.payload]) == good_frames and chunks[-1].is_final
        assert [e.code for e in runtime.of(WorkerError, "p1")] == ["tts_failed"]
        await stop(serving)

    run(main())


class OnceBrokenAsr(FakeAsr):
    """Fails its first transcription, then hears normally."""

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Any:
        if self.calls == 0:
            self.calls += 1
            raise RuntimeError("recogniser dead")
        return super().transcribe(audio, language)


def test_an_asr_engine_that_fails_reports_it_and_the_session_goes_on(fixtures_dir: Any) -> None:
    from common.audio import read_wav

    pcm, _ = read_wav(fixtures_dir / "q_en_capital.wav")

    async def main() -> None:
        engine = OnceBrokenAsr("what is the capital of zimbabwe")
        engine.partials = False  # type: ignore[misc]
        worker = AsrWorker(engine, Settings(_env_file=None, early_reply=False))
        runtime = RecordingRuntime("asr")
        worker.runtime = runtime  # type: ignore[assignment]
        await worker.handle(SessionStart(session_id="s1"))
        for _ in range(2):  # the first utterance fails, the second is heard
            await worker.handle(AudioIn(session_id="s1", pcm=pcm))
            await worker.handle(EndTurn(session_id="s1"))
        await runtime.wait_for(lambda: any(getattr(f, "is_final", False) for f in runtime.frames))
        assert [e.code for e in runtime.of(WorkerError)] == ["asr_failed"]
        finals = [f for f in runtime.frames if getattr(f, "is_final", False)]
        assert finals[0].text == "what is the capital of zimbabwe"
        for stream in worker.streams.values():
            assert stream.task is not None
            stream.task.cancel()

    run(main())
