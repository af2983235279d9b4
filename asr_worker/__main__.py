"""`python -m asr_worker`: load the configured engine, warm it up, then transcribe session audio."""

from __future__ import annotations

import asyncio

from asr_worker.registry import load_engine
from asr_worker.turn_end import load_turn_end
from asr_worker.worker import AsrWorker
from common import logs
from common.frames import AsrWork
from common.settings import get_settings
from common.worker import WorkerRuntime


async def main() -> None:
    settings = get_settings()
    logs.setup("asr_worker", settings.log_level, settings.log_content)
    engine = load_engine(settings)
    engine.warmup()
    worker = AsrWorker(engine, settings, load_turn_end(settings))
    runtime = WorkerRuntime("asr", settings, AsrWork, worker.handle, engine.info())
    worker.runtime = runtime
    await runtime.serve()


if __name__ == "__main__":
    asyncio.run(main())
