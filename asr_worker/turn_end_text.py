"""A text guard on the end-of-turn model: words that cannot end a request.

Smart Turn judges the sound; the transcript at the pause says something too. Whisper writes a
fragment without its final full stop, or with "...", and a phrase ending in "to", "the", "for"
or "and" is waiting for its object. Measured on the pause set (README "Turn-taking"), this
check alone halves the premature commits of the acoustic model, at the cost of one late end.
Per Whisper language code; a language without a list is not guarded.
"""

from __future__ import annotations

import re

import numpy as np

from asr_worker.turn_end import TurnEnd

_EN_DANGLING = """a an the to of for about with from into at in on by and or but so because if that
than my your his her our their its some any this these those is are was were be am will would can
could should want need like um uh er"""
DANGLING = {"en": frozenset(_EN_DANGLING.split())}
_TERMINAL = re.compile(r"[.?!。？！]$")
_TRAILING_OFF = re.compile(r"(\.\.\.|…|,|;|:|-)$")


def looks_unfinished(text: str, language: str) -> bool:
    """True when the words at the pause read as a fragment (only for guarded languages)."""
    words = DANGLING.get(language)
    stripped = text.strip()
    if words is None or not stripped:
        return False
    if _TRAILING_OFF.search(stripped) or not _TERMINAL.search(stripped):
        return True
    last = re.sub(r"[^\w']", "", stripped.split()[-1].lower())
    return last in words


class TextGuarded:
    """Another engine's verdict, overruled to "not done" when the transcript is a fragment."""

    def __init__(self, inner: TurnEnd) -> None:
        self.inner = inner

    def info(self) -> dict[str, str]:
        return {**self.inner.info(), "text_guard": "on"}

    def supports(self, language: str) -> bool:
        return self.inner.supports(language)

    def probability(self, audio: np.ndarray, text: str, language: str) -> float:
        if looks_unfinished(text, language):
            return 0.0  # and the model is not run at all
        return self.inner.probability(audio, text, language)
