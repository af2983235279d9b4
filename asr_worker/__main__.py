"""`python -m asr_worker`: load Whisper, warm it up, then transcribe session audio."""

from __future__ import annotations

import asyncio

from asr_worker.engine import WhisperEngine
from asr_worker.worker import AsrWorker
from common import logs
from common.frames import AsrWork
from common.languages import registry as languages
from common.models import model_info, resolve
from common.settings import get_settings
from common.worker import WorkerRuntime


async def main() -> None:
    settings = get_settings()
    logs.setup("asr_worker", settings.log_level, settings.log_content)
    path = resolve(settings.asr_model, settings.models_dir)
    engine = WhisperEngine.load(
        path,
        compute_type=settings.asr_compute_type,
        threads=settings.asr_threads,
        beam_size=settings.asr_beam_size,
    )
    engine.auto_languages = set(languages.asr_languages())
    engine.initial_prompts = languages.asr_initial_prompts()
    engine.warmup()
    worker = AsrWorker(engine, settings)
    info = {**model_info(settings.asr_model, settings.models_dir), "engine": settings.asr_engine,
            "device": "cpu"}
    runtime = WorkerRuntime("asr", settings, AsrWork, worker.handle, info)
    worker.runtime = runtime
    await runtime.serve()


if __name__ == "__main__":
    asyncio.run(main())
