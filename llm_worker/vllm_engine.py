"""vLLM engine for GPU hosts (`INZWA_LLM_ENGINE=vllm`, extra `inzwa[gpu]`).

Imported only when selected: the CPU path never loads vLLM or CUDA. vLLM's async engine runs
on its own event loop in a background thread so the worker sees the same blocking
`generate_stream` iterator as with llama-cpp-python.

Not exercised in CI (no GPU there); see README "GPU".
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class VllmEngine:
    def __init__(self, engine: Any, tokenizer: Any, temperature: float) -> None:
        self._engine = engine
        self._tokenizer = tokenizer
        self._temperature = temperature
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True, name="vllm-loop").start()

    @classmethod
    def load(cls, model_path: Path, *, context: int = 4096, temperature: float = 0.3,
             **_: Any) -> VllmEngine:
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        args = AsyncEngineArgs(model=str(model_path), max_model_len=context)
        engine = AsyncLLMEngine.from_engine_args(args)
        tokenizer = engine.engine.get_tokenizer() if hasattr(engine, "engine") else None
        return cls(engine, tokenizer, temperature)

    def warmup(self, system_prompt: str = "") -> None:
        del system_prompt  # vLLM's prefix cache warms itself
        for _ in self.generate_stream([{"role": "user", "content": "Hi"}], max_new_tokens=2):
            pass

    def generate_stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_new_tokens: int,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[str]:
        from vllm import SamplingParams

        prompt = self._tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        params = SamplingParams(max_tokens=max_new_tokens, temperature=self._temperature)
        request_id = uuid.uuid4().hex
        agen = self._engine.generate(prompt, params, request_id)
        sent = 0
        try:
            while True:
                future = asyncio.run_coroutine_threadsafe(anext(agen, None), self._loop)
                output = future.result()
                if output is None:
                    return
                text = output.outputs[0].text  # cumulative: yield only what is new
                if len(text) > sent:
                    yield text[sent:]
                    sent = len(text)
                if should_stop():
                    return
        finally:
            asyncio.run_coroutine_threadsafe(self._engine.abort(request_id), self._loop)
