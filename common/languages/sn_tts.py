"""Shona text to the voice's phoneme strings: Shona G2P, English words through espeak-ng."""

from __future__ import annotations

import logging

from common.languages.base import Phonemizer

log = logging.getLogger(__name__)

SENTENCE_END = ".!?"


class ShonaPhonemizer:
    """One phoneme string per sentence, in symbols the voice has (nearest where it lacks one).

    Words that look English (names, code-switching) are phonemized by the voice's own English
    phonemizer; the text is normalized first (numbers, money, dates... as Shona words), and a
    Shona prefix on an English word is joined to that word's English phonemes.
    """

    def __init__(self, english: Phonemizer, symbols: set[str]) -> None:
        self.english = english
        self.symbols = symbols
        self.substitutions = 0  # phonemes replaced by the nearest symbol the voice has

    def phonemize(self, text: str) -> list[str]:
        from common.languages.sn_g2p import segment

        sentences: list[str] = []
        words: list[str] = []
        for lang, chunk, phonemes, joined in segment(text):
            if joined and words and lang == "en":  # "pa" + "WhatsApp": one word, one prosody
                words[-1] += "".join(self.english.phonemize(chunk)).strip(" .!?")
            elif lang == "punct":
                if words:  # its phonemes: , . ! ? ; : (quotes and brackets have none)
                    words[-1] += "".join(phonemes)
                if any(mark in chunk for mark in SENTENCE_END) and words:
                    sentences.append(" ".join(words))
                    words = []
            elif lang == "en":
                words.append("".join(self.english.phonemize(chunk)).strip(" .!?"))
            else:
                words.append(self._voice_symbols(phonemes))
        if words:
            sentences.append(" ".join(words))
        return [s for s in sentences if s.strip()]

    def _voice_symbols(self, phonemes: list[str]) -> str:
        from common.languages.sn_g2p import to_voice_symbols

        symbols, substituted = to_voice_symbols(phonemes, self.symbols)
        if substituted:
            self.substitutions += len(substituted)
            log.debug("shona phonemes mapped to nearest voice symbols: %s", substituted)
        return "".join(symbols)
