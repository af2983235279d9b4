"""The voices a TTS worker holds loaded (issue 13, the seed's model LRU).

A worker speaks with its configured voice (`tts_model`) and, where a language has a voice of its
own (`tts_voices`: language -> model name, e.g. a Shona pack's voice) or a request names one of
those voices, with that one. Loading a voice takes seconds and its weights stay in memory, so at
most `tts_loaded_voices` are held, least recently used unloaded first; the configured voice (the
one the worker announced and warmed) is never unloaded. Each load is timed
(inzwa_model_load_ms{kind="tts"}) and the number held is a gauge (inzwa_models_loaded).
A voice that fails to load is not used: the configured one speaks instead (logged).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from common.metrics import MODEL_LOAD_MS, MODELS_LOADED
from common.settings import Settings
from tts_worker.interface import TTS

log = logging.getLogger(__name__)

Loader = Callable[[str], TTS]  # a model name -> the loaded, warmed engine (blocking)


class VoiceLibrary:
    def __init__(self, default_name: str, default: TTS, load: Loader, *, capacity: int,
                 by_language: Mapping[str, str] | None = None) -> None:
        self.default_name = default_name
        self.capacity = max(1, capacity)
        self.by_language = dict(by_language or {})
        self.names = {default_name, *self.by_language.values()}  # the voices a request may name
        self._load = load
        self._loaded: OrderedDict[str, TTS] = OrderedDict({default_name: default})
        MODELS_LOADED.labels("tts").set(1)

    def name_for(self, voice: str, language: str) -> str:
        """The voice a request gets: one it names (if configured), its language's, else the
        worker's own."""
        if voice in self.names:
            return voice
        return self.by_language.get(language or "", self.default_name)

    def loaded(self) -> list[str]:
        return list(self._loaded)

    async def get(self, name: str) -> tuple[str, TTS]:
        """The voice `name`, loaded (in a thread: the event loop keeps serving) if it is not."""
        voice = self._loaded.get(name)
        if voice is not None:
            self._loaded.move_to_end(name)
            return name, voice
        started = time.perf_counter()
        try:
            voice = await asyncio.to_thread(self._load, name)
        except Exception:
            log.exception("voice not loaded: the configured voice speaks instead", extra={"voice": name})
            return self.default_name, self._loaded[self.default_name]
        MODEL_LOAD_MS.labels("tts").observe((time.perf_counter() - started) * 1000)
        self._loaded[name] = voice
        self._evict()
        MODELS_LOADED.labels("tts").set(len(self._loaded))
        return name, voice

    def _evict(self) -> None:
        while len(self._loaded) > self.capacity:
            oldest = next(n for n in self._loaded if n != self.default_name)
            del self._loaded[oldest]  # (its weights go with the last reference)
            log.info("voice unloaded (least recently used)", extra={"voice": oldest})


def settings_loader(settings: Settings, load_engine: Callable[[Settings], TTS]) -> Loader:
    """Load another voice exactly as the configured one is loaded, with only its name changed."""
    def load(name: str) -> TTS:
        voice = load_engine(settings.model_copy(update={"tts_model": name}))
        voice.warmup()
        return voice

    return load
