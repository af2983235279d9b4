"""`INZWA_TTS_ENGINE` -> the engine module; each module's `create(settings)` builds the engine.

A new engine is one file in `tts_worker/engines/` plus one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from common.models import engine_module
from common.settings import Settings
from tts_worker import batching
from tts_worker.interface import TTS

ENGINES = {
    "piper-onnx": "tts_worker.engines.piper",
    "openai": "tts_worker.engines.openai",
    "fake": "tts_worker.engines.fake",
}


if TYPE_CHECKING:  # mypy checks every engine against the seam; nothing is imported at run time
    from tts_worker.engines import fake, openai, piper

    _CHECKED: list[Callable[[Settings], TTS]] = [fake.create, openai.create, piper.create]


def load_engine(settings: Settings) -> TTS:
    engine: TTS = engine_module("tts", ENGINES, settings.tts_engine).create(settings)
    batching.attach(engine, settings)  # with tts_batch_max > 1, sentences share VITS runs
    return engine
