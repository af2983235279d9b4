"""Workers act only on what they may (issue 10): the ASR opens streams only on SessionStart and
bounds its audio, the LLM caps tokens and prompt size, the TTS bounds text and sample rates. A
refused request gets a WorkerError (and is closed), never silence; nothing creates state."""

from __future__ import annotations

import asyncio
from typing import Any

from asr_worker.engines.fake import FakeAsr
from asr_worker.worker import AsrWorker
from common.frames import (
    AudioChunk,
    AudioIn,
    ChatMessage,
    EndTurn,
    GenerateRequest,
    SessionStart,
    SynthesizeRequest,
    TokenChunk,
    TranscribeRequest,
    WorkerError,
)
from common.metrics import DROPPED_FRAMES
from common.settings import Settings
from llm_worker.engines.fake import FakeLlm
from tests.test_engine_failures import RecordingRuntime, request, run, start_llm, stop
from tts_worker.engines.fake import FakeTts
from tts_worker.worker import TtsWorker


def dropped(reason: str) -> float:
    return DROPPED_FRAMES.labels(reason)._value.get()


def asr_worker(**overrides: Any) -> tuple[AsrWorker, RecordingRuntime]:
    worker = AsrWorker(FakeAsr("hello"), Settings(_env_file=None, **overrides))
    runtime = RecordingRuntime("asr")
    worker.runtime = runtime  # type: ignore[assignment]
    return worker, runtime


def test_audio_for_a_session_never_started_is_dropped_and_counted() -> None:
    async def main() -> None:
        worker, runtime = asr_worker()
        before = dropped("asr_unknown_session")
        for index in range(50):  # made-up session ids, as an attacker on the plane would send
            await worker.handle(AudioIn(session_id=f"made-up-{index}", pcm=b"\x01\x00" * 320))
            await worker.handle(EndTurn(session_id=f"made-up-{index}"))
        assert worker.streams == {}  # no state, no task
        assert dropped("asr_unknown_session") - before == 100
        await worker.handle(SessionStart(session_id="real"))
        await worker.handle(AudioIn(session_id="real", pcm=b"\x00\x00" * 320))
        assert list(worker.streams) == ["real"]  # a started session is served
        for stream in worker.streams.values():
            assert stream.task is not None
            stream.task.cancel()
        assert runtime.of(WorkerError) == []

    run(main())


def test_audio_out_of_bounds_is_refused_with_an_error() -> None:
    async def main() -> None:
        worker, runtime = asr_worker(max_audio_seconds=1.0)
        await worker.handle(SessionStart(session_id="s1"))
        too_long = b"\x00\x00" * 16000 * 4  # 4 s, over 1 s plus the 2 s replay margin
        await worker.handle(AudioIn(session_id="s1", pcm=too_long))
        await worker.handle(AudioIn(session_id="s1", pcm=b"\x00\x00\x00"))  # half a sample
        await worker.handle(SessionStart(session_id="s2", pcm=too_long))
        await worker.handle(TranscribeRequest(session_id="job", request_id="j1", pcm=too_long))
        errors = runtime.of(WorkerError)
        assert [(e.session_id, e.code) for e in errors] == [
            ("s1", "bad_audio"), ("s1", "bad_audio"), ("s2", "bad_audio"), ("job", "bad_audio")]
        assert "longer than 1 s" in errors[0].message and "PCM16" in errors[1].message
        assert errors[3].request_id == "j1"  # the REST job's answer, matched by its id
        assert list(worker.streams) == ["s1"]  # the refused start opened nothing
        for stream in worker.streams.values():
            assert stream.task is not None
            stream.task.cancel()

    run(main())


class CountingLlm(FakeLlm):
    """Records the token budget each request was given."""

    def __init__(self) -> None:
        super().__init__("a b c", tokens_per_s=1000)
        self.budgets: list[int] = []

    def stream(self, messages: Any, *, max_new_tokens: int, prefix: str = "") -> Any:
        self.budgets.append(max_new_tokens)
        return super().stream(messages, max_new_tokens=max_new_tokens, prefix=prefix)


def test_the_llm_caps_tokens_and_refuses_oversized_prompts() -> None:
    async def main() -> None:
        engine = CountingLlm()
        settings = Settings(_env_file=None, llm_max_new_tokens=80, max_text_chars=100)
        worker, runtime, serving = await start_llm(engine, settings)
        await worker.handle(request("asks-a-lot", max_new_tokens=100_000))
        await worker.handle(request("asks-little", max_new_tokens=5, turn=2))
        await worker.handle(request("default", turn=3))
        huge = GenerateRequest(session_id="s1", turn_id=4, request_id="huge",
                               messages=[ChatMessage("user", "x" * 401)])
        many = GenerateRequest(session_id="s1", turn_id=5, request_id="many",
                               messages=[ChatMessage("user", "hi")] * 65)
        odd = GenerateRequest(session_id="s1", turn_id=6, request_id="odd",
                              messages=[ChatMessage("tool", "hi")])
        empty = GenerateRequest(session_id="s1", turn_id=7, request_id="empty")
        for refused in (huge, many, odd, empty):
            await worker.handle(refused)
        names = ("asks-a-lot", "asks-little", "default", "huge", "many", "odd", "empty")
        await runtime.wait_for(lambda: all(runtime.final_of(n)() for n in names))
        assert engine.budgets == [80, 5, 80]  # capped at llm_max_new_tokens; the refused never ran
        for name in ("huge", "many", "odd", "empty"):
            errors = runtime.of(WorkerError, name)
            assert [e.code for e in errors] == ["bad_request"], name
            assert [t.is_final for t in runtime.of(TokenChunk, name)] == [True]  # closed, no text
        await stop(serving)

    run(main())


def test_the_tts_refuses_long_text_and_odd_sample_rates() -> None:
    async def main() -> None:
        worker = TtsWorker(FakeTts(ms_per_char=10, rtf=0.0), frame_ms=20, max_text_chars=50)
        runtime = RecordingRuntime("tts")
        worker.runtime = runtime  # type: ignore[assignment]
        serving = asyncio.create_task(worker.run())
        requests = [
            SynthesizeRequest(session_id="s1", turn_id=1, request_id="long", text="x" * 51),
            SynthesizeRequest(session_id="s1", turn_id=1, request_id="rate", text="hi", sample_rate=8000),
            SynthesizeRequest(session_id="s1", turn_id=1, request_id="ok", text="hi", sample_rate=48000),
        ]
        for phrase in requests:
            await worker.handle(phrase)
        await runtime.wait_for(lambda: all(runtime.final_of(p.request_id)() for p in requests))
        assert [e.request_id for e in runtime.of(WorkerError)] == ["long", "rate"]
        assert "16000, 22050, 24000, 48000" in runtime.of(WorkerError, "rate")[0].message
        ok = [c for c in runtime.of(AudioChunk, "ok") if c.payload]
        assert ok and all(len(c.payload) == 48000 * 2 * 20 // 1000 for c in ok)  # 20 ms at 48 kHz
        assert not any(c.payload for c in runtime.of(AudioChunk, "long") + runtime.of(AudioChunk, "rate"))
        await stop(serving)

    run(main())
