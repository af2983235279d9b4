"""`python -m llm_worker`: load the configured engine, warm it up, then serve generation requests."""

from __future__ import annotations

import asyncio

from common import logs
from common.frames import LlmWork
from common.languages import registry as languages
from common.settings import get_settings
from common.worker import WorkerRuntime
from llm_worker.registry import load_engine
from llm_worker.worker import LlmWorker


async def main() -> None:
    settings = get_settings()
    logs.setup("llm_worker", settings.log_level, settings.log_content)
    engine = load_engine(settings)
    system_prompt = settings.system_prompt or languages.get(settings.language).system_prompt
    await engine.warm(system_prompt)
    worker = LlmWorker(engine, settings, system_prompt)
    runtime = WorkerRuntime("llm", settings, LlmWork, worker.handle, engine.info())
    worker.runtime = runtime
    serving = asyncio.create_task(worker.run())
    try:
        await runtime.serve()
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        close = getattr(engine, "aclose", None)  # a remote engine's HTTP client
        if close is not None:
            await close()


if __name__ == "__main__":
    asyncio.run(main())
