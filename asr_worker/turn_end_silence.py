"""No end-of-turn model: every turn ends on the VAD silence timeout (the behaviour before
Smart Turn, and the fallback for languages a model does not know)."""

from __future__ import annotations

import numpy as np

from common.settings import Settings


class SilenceOnly:
    def info(self) -> dict[str, str]:
        return {"name": "silence", "version": "", "sha256": "", "engine": "silence"}

    def supports(self, language: str) -> bool:
        return False

    def probability(self, audio: np.ndarray, text: str, language: str) -> float:
        return 0.0


def create(settings: Settings) -> SilenceOnly:
    return SilenceOnly()
