"""LLM engines behind one small interface; llama-cpp-python on the CPU path.

The vLLM engine (GPU) lives in its own module and is imported only when selected, so the CPU
path never imports CUDA libraries.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol


class LLM(Protocol):
    def generate_stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_new_tokens: int,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[str]:
        """Yield the reply's text pieces as they are generated; stop early when asked."""
        ...

    def warmup(self) -> None: ...


class LlamaCppEngine:
    """A GGUF model through llama-cpp-python, using the chat template stored in the GGUF."""

    def __init__(self, llama: Any, temperature: float) -> None:
        self._llama = llama
        self._temperature = temperature
        self._lock = threading.Lock()  # a Llama context serves one generation at a time

    @classmethod
    def load(
        cls,
        model_path: Path,
        *,
        context: int = 4096,
        threads: int = 2,
        seed: int = 0,
        temperature: float = 0.3,
    ) -> LlamaCppEngine:
        from llama_cpp import Llama

        llama = Llama(
            model_path=str(model_path),
            n_ctx=context,
            n_threads=threads,
            n_threads_batch=threads,
            seed=seed,
            verbose=False,
        )
        return cls(llama, temperature)

    def warmup(self) -> None:
        for _ in self.generate_stream([{"role": "user", "content": "Hi"}], max_new_tokens=2):
            pass

    def generate_stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_new_tokens: int,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[str]:
        with self._lock:
            stream = self._llama.create_chat_completion(
                messages=messages,
                max_tokens=max_new_tokens,
                temperature=self._temperature,
                repeat_penalty=1.1,
                stream=True,
            )
            for event in stream:
                piece = event["choices"][0]["delta"].get("content")
                if piece:
                    yield piece
                if should_stop():
                    stream.close()  # frees the context for the next request at once
                    return


def load_engine(engine: str, model_path: Path, **options: Any) -> LLM:
    if engine == "vllm":
        from llm_worker.vllm_engine import VllmEngine  # GPU only; never imported on CPU

        return VllmEngine.load(model_path, **options)
    return LlamaCppEngine.load(model_path, **options)
