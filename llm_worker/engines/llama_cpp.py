"""`INZWA_LLM_ENGINE=llama-cpp`: a GGUF model through llama-cpp-python, on the CPU, with the chat
template stored in the GGUF."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from common.models import loaded_model_info, resolve
from common.settings import Settings
from llm_worker.blocking import BlockingLLM


def create(settings: Settings) -> LlamaCppEngine:
    return LlamaCppEngine.load(
        resolve(settings.llm_model, settings.models_dir), context=settings.llm_context,
        threads=settings.llm_threads, seed=settings.llm_seed, temperature=settings.llm_temperature,
        model_name=settings.llm_model,
    )


class LlamaCppEngine(BlockingLLM):
    """A GGUF model through llama-cpp-python, using the chat template stored in the GGUF."""

    def __init__(self, llama: Any, temperature: float, *, path: Path | None = None,
                 model_name: str = "") -> None:
        self._llama = llama
        self._temperature = temperature
        self._lock = threading.Lock()  # a Llama context serves one generation at a time
        self._path = path
        self._model_name = model_name or (path.name if path else "gguf")

    @classmethod
    def load(
        cls,
        model_path: Path,
        *,
        context: int = 4096,
        threads: int = 2,
        seed: int = 0,
        temperature: float = 0.3,
        model_name: str = "",
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
        return cls(llama, temperature, path=Path(model_path), model_name=model_name)

    def info(self) -> dict[str, str]:
        if self._path is None:
            return {"name": self._model_name, "version": "", "sha256": "", "device": "cpu",
                    "engine": "llama-cpp"}
        return loaded_model_info(self._model_name, self._path, engine="llama-cpp", device="cpu")

    def warmup(self, system_prompt: str = "") -> None:
        """One tiny generation; with the system prompt, so the first real turn finds it in the
        KV cache (llama.cpp reuses the longest common prompt prefix)."""
        messages = [{"role": "user", "content": "Hi"}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        for _ in self.generate_stream(messages, max_new_tokens=2):
            pass

    def generate_stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_new_tokens: int,
        should_stop: Callable[[], bool] = lambda: False,
        prefix: str = "",
    ) -> Iterator[str]:
        with self._lock:
            if prefix:
                stream = self._continue(messages, prefix, max_new_tokens)
            else:
                stream = self._llama.create_chat_completion(
                    messages=messages,
                    max_tokens=max_new_tokens,
                    temperature=self._temperature,
                    repeat_penalty=1.1,
                    stream=True,
                )
            for event in stream:
                choice = event["choices"][0]
                piece = choice["delta"].get("content") if "delta" in choice else choice.get("text")
                if piece:
                    yield piece
                if should_stop():
                    stream.close()  # frees the context for the next request at once
                    return

    def _continue(self, messages: list[dict[str, str]], prefix: str, max_new_tokens: int) -> Any:
        """A raw completion of the chat template's prompt plus the reply's first part."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        model = self._llama._model  # special tokens' text (detokenize renders them empty)
        formatter = Jinja2ChatFormatter(
            template=self._llama.metadata["tokenizer.chat_template"],
            bos_token=model.token_get_text(self._llama.token_bos()),
            eos_token=model.token_get_text(self._llama.token_eos()),
        )
        formatted = formatter(messages=cast(Any, messages))  # plain dicts of the right shape
        budget = max(1, max_new_tokens - len(self._llama.tokenize(prefix.encode(), add_bos=False)))
        return self._llama.create_completion(
            prompt=formatted.prompt + prefix,
            max_tokens=budget,
            temperature=self._temperature,
            repeat_penalty=1.1,
            stop=formatted.stop,
            stream=True,
        )

