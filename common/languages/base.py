"""What a language pack holds, and the one interface the processes use to read it."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class Phonemizer(Protocol):
    """Text to one phoneme string per sentence, in the voice's symbols (the TTS's input)."""

    def phonemize(self, text: str) -> list[str]: ...


# Builds a language's phonemizer from the voice's English/espeak phonemizer (for words that
# fall back to it) and the set of symbols the voice knows.
PhonemizerFactory = Callable[[Phonemizer, set[str]], Phonemizer]

FALLBACK_REASONS = ("did_not_hear", "llm_timeout", "cannot_help", "handover", "unavailable")


@dataclass(frozen=True)
class LanguagePack:
    code: str  # the session's language code, e.g. "sn"
    name: str
    asr_language: str  # Whisper's code for it
    system_prompt: str
    fallbacks: dict[str, str]
    asr_initial_prompt: str = ""  # words the ASR should expect (names, places)
    espeak_voice: str = ""  # espeak-ng voice for G2P when `phonemizer` is None
    phonemizer: PhonemizerFactory | None = None
    blocked_input: tuple[str, ...] = ()  # regexes: requests the assistant will not take up
    blocked_output: tuple[str, ...] = ()  # regexes: words the assistant must not say
    normalize: Callable[[str], str] = field(default=lambda text: text)

    def __post_init__(self) -> None:
        missing = [reason for reason in FALLBACK_REASONS if reason not in self.fallbacks]
        if missing:
            raise ValueError(f"language pack {self.code!r} lacks fallbacks: {missing}")

    def fallback(self, reason: str) -> str:
        return self.fallbacks[reason]

    def blocks_input(self, text: str) -> bool:
        return any(re.search(p, text, re.IGNORECASE) for p in self.blocked_input)

    def blocks_output(self, text: str) -> bool:
        return any(re.search(p, text, re.IGNORECASE) for p in self.blocked_output)
