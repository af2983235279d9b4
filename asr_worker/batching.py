"""Concurrent `transcribe` calls from different sessions decoded together in one batch.

Each session's decodes run in their own thread (`asyncio.to_thread`), and the Whisper engine
takes one call at a time, so with several sessions talking their finals, pauses and partials
queue behind each other. `BatchingAsr` sits in front of an engine that can decode a batch
(`asr_worker.interface.BatchASR`): one dispatcher thread runs the decodes, and the calls that
queued up while a decode was running go together in the next one, first come first served.

Only calls with the same `batch_key` share a decode (for Whisper: the same padded length and
prompt position, since zero padding changes the text): one batch is one `generate` call, and its
callers get their results as soon as it ends rather than after every other group in the queue.

A lone call never waits: when nothing is running it is decoded at once, on the engine's single
path. Only calls that queue behind a running decode are batched, and those may wait up to
`window_ms` from the first of them for more to arrive (they have usually waited that long already,
behind the running decode, so the window costs nothing in practice).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from asr_worker.interface import ASR, AsrRequest, BatchASR, FileTranscript, Transcription
from common.batcher import Batcher

if TYPE_CHECKING:
    import numpy as np

    from common.settings import Settings


class BatchingAsr:
    """`ASR` over a batch-capable engine; everything but `transcribe` goes straight through."""

    def __init__(self, engine: Any, *, window_ms: float = 5.0, max_batch: int = 8) -> None:
        if not isinstance(engine, BatchASR):
            raise TypeError(f"{type(engine).__name__} cannot decode a batch (no transcribe_batch)")
        self._engine: Any = engine  # an ASR that is also a BatchASR
        self._batcher: Batcher[AsrRequest, Transcription] = Batcher(
            self._alone, engine.transcribe_batch, window_ms=window_ms, max_batch=max_batch,
            name="asr-batcher")
        self.partials: bool = bool(getattr(engine, "partials", False))
        self.prompted: bool = bool(getattr(engine, "prompted", False))

    def __getattr__(self, name: str) -> Any:
        # Only reached for what this class lacks: multilingual, transcribe_stock, ...
        if name.startswith("__") or name == "_engine":  # copy/pickle probes, a half-built self
            raise AttributeError(name)
        return getattr(self._engine, name)

    def info(self) -> dict[str, str]:
        info: dict[str, str] = self._engine.info()
        return info

    def warmup(self) -> None:
        self._engine.warmup()

    def transcribe_file(self, audio: np.ndarray, language: str | None = None) -> FileTranscript:
        transcript: FileTranscript = self._engine.transcribe_file(audio, language)
        return transcript

    def transcribe(self, audio: np.ndarray, language: str | None = None, prompt: str = "") -> Transcription:
        """Blocks the calling thread until its decode (alone or in a batch) is done; an error is
        raised here, in the caller whose request caused it."""
        request = AsrRequest(audio, language, prompt)
        return self._batcher.submit(request, self._key(request))  # (key in the caller's thread)

    def _alone(self, request: AsrRequest) -> Transcription:
        result: Transcription = self._engine.transcribe(request.audio, request.language,
                                                        prompt=request.prompt)
        return result

    def _key(self, request: AsrRequest) -> Hashable | None:
        try:
            key: Hashable | None = self._engine.batch_key(request)
        except Exception:  # a forecast only: the decode alone raises the error where it belongs
            return None
        return key

    @property
    def batch_sizes(self) -> Counter[int]:
        return self._batcher.batch_sizes

    def stats(self) -> dict[str, Any]:
        """Decodes per batch size, the calls they served, and the calls queued now."""
        return self._batcher.stats()


def wrap(engine: ASR, settings: Settings) -> ASR:
    """The engine behind a batcher when it can decode batches and batching is on."""
    if settings.asr_batch_window_ms <= 0 or settings.asr_batch_max < 2:
        return engine
    if not isinstance(engine, BatchASR):
        return engine
    batching: ASR = BatchingAsr(engine, window_ms=settings.asr_batch_window_ms,
                                max_batch=settings.asr_batch_max)
    return batching
