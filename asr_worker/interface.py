"""What the ASR worker needs from a speech recognition engine, and what it gets back.

Engines are batch recognisers: audio in, text out. Streaming (turns, partials, pauses) is not an
engine's business: `asr_worker.session.AsrSession` adapts any engine with the VAD. This module
imports nothing of the session or the worker, so engines depend on it and nothing else here.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Transcription:
    text: str
    confidence: float  # 0..1: exp of the mean token log-probability
    language: str


@dataclass(frozen=True)
class TimedSegment:
    start_s: float
    end_s: float
    text: str
    confidence: float


@dataclass(frozen=True)
class FileTranscript:
    """A whole recording's transcript (REST uploads), with segment timestamps."""

    segments: list[TimedSegment]
    language: str
    language_probability: float
    duration_s: float

    @property
    def text(self) -> str:
        return " ".join(segment.text for segment in self.segments if segment.text).strip()


class ASR(Protocol):
    # Cheap enough to re-transcribe the growing utterance every few hundred ms for partials.
    # A remote engine says no: one request per final (and per pause) instead of three a second.
    partials: bool

    def info(self) -> dict[str, str]:
        """name, version, sha256 (of the loaded weights; empty when remote), device, engine."""
        ...

    def warmup(self) -> None:
        """One short inference (or a reachability check) before the worker says READY."""
        ...

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcription:
        """Transcribe float32 mono 16 kHz audio; None or "auto" detects the language."""
        ...

    def transcribe_file(self, audio: np.ndarray, language: str | None = None) -> FileTranscript:
        """A whole recording, with segment timestamps (REST uploads)."""
        ...


@dataclass(frozen=True)
class AsrRequest:
    """One utterance of a batch: what `transcribe(audio, language, prompt=)` would take."""

    audio: np.ndarray
    language: str | None = None
    prompt: str = ""  # the words said just before `audio` (engines with `prompted = True`)


@runtime_checkable
class BatchASR(Protocol):
    """Optional capability: several utterances (from different sessions) decoded together, each
    result what `transcribe` would give that request alone. `asr_worker.batching` uses it."""

    def transcribe_batch(self, requests: Sequence[AsrRequest]) -> list[Transcription]: ...

    def batch_key(self, request: AsrRequest) -> Hashable | None:
        """Requests with equal keys are worth one batch; None: decode it alone."""
        ...
