"""`INZWA_LLM_ENGINE` -> the engine module; each module's `create(settings)` builds the engine.

A new engine is one file in `llm_worker/engines/` plus one line here. Modules are imported only
when selected: the CPU path never imports vLLM or torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from common.models import engine_module
from common.settings import Settings
from llm_worker.interface import LLM

ENGINES = {
    "llama-cpp": "llm_worker.engines.llama_cpp",
    "llama-cpp-batched": "llm_worker.engines.llama_cpp_batched",
    "vllm": "llm_worker.engines.vllm",
    "openai": "llm_worker.engines.openai",
    "fake": "llm_worker.engines.fake",
}


if TYPE_CHECKING:  # mypy checks every engine against the seam; nothing is imported at run time
    from llm_worker.engines import fake, llama_cpp, llama_cpp_batched, openai, vllm

    _CHECKED: list[Callable[[Settings], LLM]] = [fake.create, llama_cpp.create, openai.create, vllm.create,
                                                 llama_cpp_batched.create]


def load_engine(settings: Settings) -> LLM:
    engine: LLM = engine_module("llm", ENGINES, settings.llm_engine).create(settings)
    return engine
