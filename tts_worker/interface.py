"""What the TTS worker needs from a speech synthesis engine.

Every engine takes text (`TTS`). Voices that are driven by phonemes (Piper) also have the
optional `PhonemeVoice` capability: the worker then hands them the session language's G2P
(Shona rules onto the voice's trained symbols). Text voices (a remote server, the fake) need
no phonemizer at all. Imports nothing of the worker.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol, runtime_checkable

from common.languages.base import Phonemizer

SAMPLE_RATES = (16000, 22050, 24000, 48000)  # what a SynthesizeRequest may ask for


class TTS(Protocol):
    def info(self) -> dict[str, str]:
        """name, version, sha256 (of the loaded weights; empty when remote), device, engine."""
        ...

    def warmup(self) -> None:
        """One short synthesis (or a reachability check) before the worker says READY."""
        ...

    def synthesize_stream(
        self, text: str, *, sample_rate: int = 16000, frame_ms: int = 20, language: str = "",
    ) -> Iterator[bytes]:
        """PCM16 LE mono frames of exactly `frame_ms` at `sample_rate`, the last zero-padded,
        yielded as the audio is made (the first frame long before the whole text is done)."""
        ...


class VoiceSymbols(Protocol):
    phoneme_id_map: Mapping[str, list[int]]


@runtime_checkable
class PhonemeSymbols(Protocol):
    """What a language's G2P is built from: the voice's own (espeak-ng) G2P and its symbols."""

    phonemizer: Phonemizer
    config: VoiceSymbols


@runtime_checkable
class PhonemeVoice(PhonemeSymbols, Protocol):
    """The optional capability of a voice that speaks phonemes."""

    def synthesize_stream(
        self, text: str, *, sample_rate: int = 16000, frame_ms: int = 20, language: str = "",
        phonemizer: Phonemizer | None = None,
    ) -> Iterator[bytes]:
        """As `TTS.synthesize_stream`; `phonemizer` (a language's G2P) replaces the voice's own."""
        ...
