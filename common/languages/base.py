"""What a language pack holds, and the one interface the processes use to read it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from common.languages import safety


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
    # Safety rules: a regex, or (reason, regex), matched against text normalized by
    # `common.languages.safety` (case, punctuation, whitespace, `safety_stem` on every word).
    blocked_input: tuple[safety.Rule, ...] = ()  # requests the assistant will not take up
    blocked_output: tuple[safety.Rule, ...] = ()  # words the assistant must not say
    normalize: Callable[[str], str] = field(default=lambda text: text)
    # Text normalization before G2P (languages area): numbers, money, times, dates, phone
    # numbers, abbreviations, URLs and symbols written out as words (common/languages/
    # normalize.py). A pack's own phonemizer calls it itself; a voice's own espeak-ng reads
    # the text after it (tts_worker/engines/piper.py).
    speech_text: Callable[[str], str] = field(default=lambda text: text)
    safety_stem: Callable[[str], str] = safety.identity

    def __post_init__(self) -> None:
        missing = [reason for reason in FALLBACK_REASONS if reason not in self.fallbacks]
        if missing:
            raise ValueError(f"language pack {self.code!r} lacks fallbacks: {missing}")

    def fallback(self, reason: str) -> str:
        return self.fallbacks[reason]

    def input_refusal(self, texts: Iterable[str]) -> str | None:
        """Why any of `texts` is refused as input (the rule's reason), or None; not counted."""
        return safety.refusal(self.blocked_input, self.safety_stem, texts)

    def blocks_input(self, text: str) -> bool:
        return self.blocks_any_input([text])

    def blocks_any_input(self, texts: Iterable[str]) -> bool:
        """True (and counted by reason) when any of the texts is refused."""
        reason = self.input_refusal(texts)
        if reason is not None:
            safety.count("input", self.code, reason)
        return reason is not None

    def blocks_output(self, text: str) -> bool:
        reason = safety.refusal(self.blocked_output, self.safety_stem, [text])
        if reason is not None:
            safety.count("output", self.code, reason)
        return reason is not None
