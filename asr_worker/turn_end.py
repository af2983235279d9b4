"""End-of-turn seam: at a short pause, is the speaker done?

An end-of-turn engine looks at the utterance's audio (and, if it wants, its transcript) and says
how likely the turn is complete. `AsrSession` asks at a pause of `INZWA_EARLY_PAUSE_MS`: above
`INZWA_TURN_END_THRESHOLD` the final transcript goes out at once; otherwise the turn waits for
the silence timeout. `INZWA_TURN_END` picks the engine; a new one is one file plus one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from common.models import engine_module
from common.settings import Settings

ENGINES = {
    "smart-turn": "asr_worker.turn_end_smart",
    "silence": "asr_worker.turn_end_silence",
    "llm": "asr_worker.turn_end_llm",  # text only, English (README "Turn-taking")
}


class TurnEnd(Protocol):
    def info(self) -> dict[str, str]:
        """name, version, sha256 of the weights (empty when there are none), engine."""
        ...

    def supports(self, language: str) -> bool:
        """Whether the engine's judgement is worth anything for this Whisper language code;
        where it is not, the turn ends on the silence timeout alone."""
        ...

    def probability(self, audio: np.ndarray, text: str, language: str) -> float:
        """P(the turn is complete) for float32 mono 16 kHz audio ending at the pause."""
        ...


if TYPE_CHECKING:  # mypy checks every engine against the seam; nothing is imported at run time
    from asr_worker import turn_end_llm, turn_end_silence, turn_end_smart

    _CHECKED: list[Callable[[Settings], TurnEnd]] = [turn_end_smart.create,
                                                      turn_end_silence.create,
                                                      turn_end_llm.create]


def load_turn_end(settings: Settings) -> TurnEnd:
    engine: TurnEnd = engine_module("turn_end", ENGINES, settings.turn_end).create(settings)
    if settings.turn_end_text_guard:
        from asr_worker.turn_end_text import TextGuarded

        engine = TextGuarded(engine)
    return engine
