"""`INZWA_LLM_ENGINE=vllm`: vLLM's `AsyncLLMEngine` on a GPU host (extra `inzwa[gpu]`).

The registry imports this module only when it is selected, and vLLM itself is imported only in
`create()`, so the CPU path never loads vLLM, torch or CUDA. vLLM's engine is async: it runs on
the worker's event loop, and `concurrency` requests at once share its continuous batching.

What is used of vLLM is small and pinned by tests/test_engine_vllm.py with a stand-in object:
`generate(prompt, params, request_id)` is an async generator of cumulative `RequestOutput`s
(`outputs[0].text` grows, `finished` ends it), `abort(request_id)` stops a request, and
`get_tokenizer()` (sync or async, depending on the vLLM version) has `apply_chat_template`.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from common.models import loaded_model_info, resolve
from common.settings import Settings
from llm_worker.interface import Messages


def create(settings: Settings) -> VllmEngine:
    from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams

    path = resolve(settings.llm_model, settings.models_dir)
    engine = AsyncLLMEngine.from_engine_args(
        AsyncEngineArgs(model=str(path), max_model_len=settings.llm_context, seed=settings.llm_seed)
    )
    return VllmEngine(engine, SamplingParams, temperature=settings.llm_temperature,
                      concurrency=settings.llm_concurrency, path=path, model_name=settings.llm_model)


class VllmEngine:
    def __init__(self, engine: Any, sampling_params: Callable[..., Any], *, temperature: float = 0.3,
                 concurrency: int = 4, path: Path | None = None, model_name: str = "") -> None:
        self._engine = engine
        self._sampling_params = sampling_params  # vllm.SamplingParams (a stand-in in tests)
        self._temperature = temperature
        self.concurrency = concurrency
        self._path = path
        self._model_name = model_name or (path.name if path else "vllm")
        self._tokenizer: Any = None

    def info(self) -> dict[str, str]:
        if self._path is None:
            return {"name": self._model_name, "version": "", "sha256": "", "device": "cuda",
                    "engine": "vllm"}
        return loaded_model_info(self._model_name, self._path, engine="vllm", device="cuda")

    async def warm(self, system_prompt: str = "") -> None:
        del system_prompt  # vLLM's prefix cache warms itself
        async for _ in self.stream([{"role": "user", "content": "Hi"}], max_new_tokens=2):
            pass

    async def _get_tokenizer(self) -> Any:
        if self._tokenizer is None:
            tokenizer = self._engine.get_tokenizer()
            self._tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer
        return self._tokenizer

    async def stream(self, messages: Messages, *, max_new_tokens: int,
                     prefix: str = "") -> AsyncIterator[str]:
        tokenizer = await self._get_tokenizer()
        # A replay continues the reply: the template's assistant turn is opened, the text already
        # sent follows it, and generation goes on from there (its budget less what was sent).
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        budget = max_new_tokens
        if prefix:
            budget = max(1, max_new_tokens - len(tokenizer.encode(prefix, add_special_tokens=False)))
        params = self._sampling_params(max_tokens=budget, temperature=self._temperature)
        request_id = uuid.uuid4().hex
        sent, finished = 0, False
        try:
            async for output in self._engine.generate(prompt + prefix, params, request_id):
                text = output.outputs[0].text  # cumulative: yield only what is new
                if len(text) > sent:
                    yield text[sent:]
                    sent = len(text)
                finished = bool(output.finished)
        finally:
            if not finished:  # closed early (barge-in) or failed: free the batch slot now
                await self._engine.abort(request_id)
