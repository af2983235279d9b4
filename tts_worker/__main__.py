"""`python -m tts_worker`: load the configured voice, warm it up, then synthesize phrases."""

from __future__ import annotations

import asyncio

from common import logs
from common.frames import TtsWork
from common.settings import get_settings
from common.worker import serve_serial
from tts_worker.cache import make_cache
from tts_worker.registry import load_engine
from tts_worker.voices import VoiceLibrary, settings_loader
from tts_worker.worker import TtsWorker


async def main() -> None:
    settings = get_settings()
    logs.setup("tts_worker", settings.log_level, settings.log_content)
    voice = load_engine(settings)
    voice.warmup()
    cache = make_cache(entries=settings.tts_cache_entries, max_bytes=settings.tts_cache_bytes,
                       ttl_s=settings.tts_cache_ttl_s, redis_url=settings.redis_url)
    voices = VoiceLibrary(settings.tts_model, voice, settings_loader(settings, load_engine),
                          capacity=settings.tts_loaded_voices, by_language=settings.tts_voices)
    worker = TtsWorker(voice, settings.audio_frame_ms, settings.max_text_chars, cache, voices,
                       concurrency=settings.tts_batch_max)  # >1: sessions' phrases at once, batched
    await serve_serial("tts", settings, TtsWork, worker, voice.info())


if __name__ == "__main__":
    asyncio.run(main())
