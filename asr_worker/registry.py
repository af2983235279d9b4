"""`INZWA_ASR_ENGINE` -> the engine module; each module's `create(settings)` builds the engine.

A new engine is one file in `asr_worker/engines/` plus one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from asr_worker import batching
from asr_worker.interface import ASR
from common.models import engine_module
from common.settings import Settings

ENGINES = {
    "faster-whisper": "asr_worker.engines.whisper",
    "openai": "asr_worker.engines.openai",
    "fake": "asr_worker.engines.fake",
}


if TYPE_CHECKING:  # mypy checks every engine against the seam; nothing is imported at run time
    from asr_worker.engines import fake, openai, whisper

    _CHECKED: list[Callable[[Settings], ASR]] = [fake.create, openai.create, whisper.create]


def load_engine(settings: Settings) -> ASR:
    engine: ASR = engine_module("asr", ENGINES, settings.asr_engine).create(settings)
    # Sessions' decodes that queue behind each other go in one batch (INZWA_ASR_BATCH_*).
    return batching.wrap(engine, settings)
