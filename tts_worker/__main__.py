"""`python -m tts_worker`: load the VITS voice, warm it up, then synthesize phrases."""

from __future__ import annotations

import asyncio

from common import logs
from common.frames import TtsWork
from common.models import model_info, resolve
from common.settings import get_settings
from common.worker import serve_serial
from tts_worker.engine import PiperVoice
from tts_worker.worker import TtsWorker


async def main() -> None:
    settings = get_settings()
    logs.setup("tts_worker", settings.log_level, settings.log_content)
    voice = PiperVoice.load(
        resolve(settings.tts_model, settings.models_dir),
        threads=settings.tts_threads,
        espeak_voice=settings.tts_espeak_voice,
    )
    voice.warmup()
    worker = TtsWorker(voice, settings.audio_frame_ms)
    info = {**model_info(settings.tts_model, settings.models_dir), "engine": settings.tts_engine,
            "device": "cpu"}  # onnxruntime CPUExecutionProvider
    await serve_serial("tts", settings, TtsWork, worker, info)


if __name__ == "__main__":
    asyncio.run(main())
