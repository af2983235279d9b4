"""The vLLM engine without a GPU: the whole LlmWorker over `VllmEngine` driving a stand-in
object with vLLM's `AsyncLLMEngine` shape (`generate(prompt, params, request_id)` is an async
generator of cumulative RequestOutputs; `abort(request_id)`; `get_tokenizer()`), and proof that
the CPU path never imports vLLM or torch.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from common.frames import TokenChunk, WorkerError
from common.settings import Settings
from llm_worker.engines.vllm import VllmEngine
from tests.test_engine_failures import request, run, start_llm, stop

REPLY = "Harare is the capital of Zimbabwe. It is a big and busy city."
MARK = "<|assistant|>\n"


@dataclass
class SamplingParams:  # vllm.SamplingParams' fields that the engine sets
    max_tokens: int
    temperature: float


@dataclass
class CompletionOutput:
    text: str


@dataclass
class RequestOutput:
    request_id: str
    outputs: list[CompletionOutput]
    finished: bool


class Tokenizer:
    def apply_chat_template(self, messages: list[dict[str, str]], *, tokenize: bool,
                            add_generation_prompt: bool) -> str:
        assert not tokenize and add_generation_prompt
        return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + MARK

    def encode(self, text: str, add_special_tokens: bool = True) -> list[str]:
        return text.split()


@dataclass
class FakeAsyncLLMEngine:
    """A deterministic "model": it always writes REPLY, going on from whatever of it the prompt
    already holds after the assistant mark, a word per step, at most max_tokens words."""

    step_s: float = 0.005
    calls: list[tuple[str, SamplingParams, str]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    active: int = 0
    most_active: int = 0

    async def get_tokenizer(self) -> Tokenizer:
        return Tokenizer()

    async def generate(
        self, prompt: str, params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        self.calls.append((prompt, params, request_id))
        written = prompt.rsplit(MARK, 1)[1]
        assert REPLY.startswith(written), "the prompt's reply so far is not this model's"
        words = REPLY[len(written):].split(" ")
        words = [w for w in words if w] if not written else words
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            for count in range(1, min(len(words), params.max_tokens) + 1):
                await asyncio.sleep(self.step_s)
                text = " ".join(words[:count])
                finished = count == min(len(words), params.max_tokens)
                yield RequestOutput(request_id, [CompletionOutput(text)], finished)  # cumulative
        finally:
            self.active -= 1

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


def engine(fake: FakeAsyncLLMEngine, concurrency: int = 1) -> VllmEngine:
    return VllmEngine(fake, SamplingParams, temperature=0.0, concurrency=concurrency)


def reply_of(runtime: Any, rid: str) -> str:
    return "".join(t.token for t in runtime.of(TokenChunk, rid))


def test_the_worker_streams_a_reply_from_cumulative_outputs() -> None:
    async def main() -> None:
        fake = FakeAsyncLLMEngine()
        worker, runtime, serving = await start_llm(engine(fake))
        await worker.handle(request(max_new_tokens=40))
        await runtime.wait_for(runtime.final_of("r1"))
        assert reply_of(runtime, "r1") == REPLY  # each delta once, in order
        assert len(runtime.of(TokenChunk, "r1")) == len(REPLY.split()) + 1  # a piece per step + final
        prompt, params, _ = fake.calls[0]
        assert prompt.endswith(MARK) and params.max_tokens == 40
        assert fake.aborted == [] and runtime.of(WorkerError) == []  # finished: nothing to abort
        await stop(serving)

    run(main())


def test_a_replay_continues_after_the_prefix() -> None:
    """The bug this engine had: `prefix=` was not a parameter, and the worker hung."""

    async def main() -> None:
        fake = FakeAsyncLLMEngine()
        worker, runtime, serving = await start_llm(engine(fake))
        prefix = "Harare is the capital"
        await worker.handle(request(max_new_tokens=40, prefix=prefix))
        await runtime.wait_for(runtime.final_of("r1"))
        assert prefix + reply_of(runtime, "r1") == REPLY  # only the new text, nothing repeated
        prompt, params, _ = fake.calls[0]
        assert prompt.endswith(MARK + prefix)
        assert params.max_tokens == 40 - len(prefix.split())  # the budget less what was sent
        await stop(serving)

    run(main())


def test_a_cancel_aborts_the_vllm_request() -> None:
    async def main() -> None:
        fake = FakeAsyncLLMEngine(step_s=0.05)
        worker, runtime, serving = await start_llm(engine(fake))
        await worker.handle(request(max_new_tokens=40))
        await runtime.wait_for(lambda: len(runtime.of(TokenChunk, "r1")) >= 2)
        runtime.cancelled.add(("s1", 1))
        await runtime.wait_for(runtime.final_of("r1"))
        assert fake.aborted == [fake.calls[0][2]]  # vLLM is told, freeing its batch slot
        assert len(runtime.of(TokenChunk, "r1")) < len(REPLY.split())
        await stop(serving)

    run(main())


def test_requests_run_concurrently_up_to_the_engines_concurrency() -> None:
    async def main() -> None:
        fake = FakeAsyncLLMEngine(step_s=0.02)
        worker, runtime, serving = await start_llm(engine(fake, concurrency=3))
        for index in range(5):
            await worker.handle(request(f"r{index}", turn=index + 1))
        await runtime.wait_for(lambda: all(runtime.final_of(f"r{i}")() for i in range(5)))
        assert fake.most_active == 3  # three at once, never more
        assert all(reply_of(runtime, f"r{i}") == REPLY for i in range(5))
        await stop(serving)

    run(main())


def test_the_cpu_path_never_imports_vllm_or_torch() -> None:
    code = (
        "import sys\n"
        "from common.settings import Settings\n"
        "import llm_worker.__main__, llm_worker.worker, llm_worker.registry\n"
        "import llm_worker.engines.vllm, llm_worker.engines.llama_cpp, llm_worker.engines.openai\n"
        "from llm_worker.registry import load_engine\n"
        "load_engine(Settings(_env_file=None, llm_engine='fake'))\n"
        "loaded = sorted(m for m in ('vllm', 'torch', 'llama_cpp') if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.strip() == ""  # not even llama.cpp: engines import their library when created


def test_selecting_vllm_without_vllm_installed_fails_clearly() -> None:
    from llm_worker.registry import load_engine

    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:  # a GPU host: nothing to prove here
        return
    settings = Settings(_env_file=None, llm_engine="vllm")
    try:
        load_engine(settings)
    except ImportError as exc:
        assert "vllm" in str(exc)
    else:
        raise AssertionError("loading the vLLM engine without vLLM must fail")
