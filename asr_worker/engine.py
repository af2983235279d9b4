"""Kept so existing imports (`bench`, the accuracy tests) still work: the Whisper engine lives in
`asr_worker/engines/whisper.py`, the ASR seam in `asr_worker/interface.py`."""

from asr_worker.engines.whisper import (
    EXTRA_TOKENS,
    MIN_FRAMES,
    PAD_FRAMES,
    TOKENS_PER_SECOND,
    WINDOW_FRAMES,
    WhisperEngine,
    collapse_repeats,
    has_repetition_loop,
    max_new_tokens,
    padded_frames,
)
from asr_worker.interface import ASR, FileTranscript, TimedSegment, Transcription

__all__ = [
    "ASR", "EXTRA_TOKENS", "MIN_FRAMES", "PAD_FRAMES", "TOKENS_PER_SECOND", "WINDOW_FRAMES",
    "FileTranscript", "TimedSegment", "Transcription", "WhisperEngine", "collapse_repeats",
    "has_repetition_loop", "max_new_tokens", "padded_frames",
]
