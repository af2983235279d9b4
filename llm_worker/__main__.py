"""`python -m llm_worker`: load the LLM, warm it up, then serve generation requests."""

from __future__ import annotations

import asyncio
import logging

from common import logs
from common.frames import LlmWork
from common.languages import registry as languages
from common.models import model_info, resolve
from common.settings import get_settings
from common.worker import serve_serial
from llm_worker.engine import load_engine
from llm_worker.worker import LlmWorker

log = logging.getLogger("llm_worker")


async def main() -> None:
    settings = get_settings()
    logs.setup("llm_worker", settings.log_level, settings.log_content)
    path = resolve(settings.llm_model, settings.models_dir)
    engine = load_engine(
        settings.llm_engine,
        path,
        context=settings.llm_context,
        threads=settings.llm_threads,
        seed=settings.llm_seed,
        temperature=settings.llm_temperature,
    )
    system_prompt = settings.system_prompt or languages.get(settings.language).system_prompt
    engine.warmup(system_prompt)
    worker = LlmWorker(engine, settings.llm_max_new_tokens, system_prompt)
    info = {**model_info(settings.llm_model, settings.models_dir), "engine": settings.llm_engine,
            "device": "cuda" if settings.llm_engine == "vllm" else "cpu"}
    await serve_serial("llm", settings, LlmWork, worker, info)


if __name__ == "__main__":
    asyncio.run(main())
