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

import threading
import time
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asr_worker.interface import ASR, AsrRequest, BatchASR, FileTranscript, Transcription

if TYPE_CHECKING:
    import numpy as np

    from common.settings import Settings


@dataclass(eq=False)  # calls are compared by identity (their audio is an array)
class _Call:
    request: AsrRequest
    key: Hashable | None  # the engine's batch key; None: always alone
    arrived: float  # time.monotonic()
    behind: bool  # a decode was running when it arrived: it may wait for company
    done: threading.Event = field(default_factory=threading.Event)
    result: Transcription | None = None
    error: BaseException | None = None


class BatchingAsr:
    """`ASR` over a batch-capable engine; everything but `transcribe` goes straight through."""

    def __init__(self, engine: Any, *, window_ms: float = 5.0, max_batch: int = 8) -> None:
        if not isinstance(engine, BatchASR):
            raise TypeError(f"{type(engine).__name__} cannot decode a batch (no transcribe_batch)")
        self._engine: Any = engine  # an ASR that is also a BatchASR
        self._window_s = max(0.0, window_ms) / 1000.0
        self._max = max(1, max_batch)
        self._cond = threading.Condition()
        self._pending: list[_Call] = []
        self._running = False  # the dispatcher is decoding (or about to)
        self._thread: threading.Thread | None = None
        self.partials: bool = bool(getattr(engine, "partials", False))
        self.prompted: bool = bool(getattr(engine, "prompted", False))
        self.batch_sizes: Counter[int] = Counter()  # size -> decodes of that size, for the bench
        self.waited = 0  # batches that held back for the window (a lone call never does)
        self.retried = 0  # calls decoded alone again after their batch failed

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
        raised here, in the caller whose request caused it (or in each, if the engine fails)."""
        request = AsrRequest(audio, language, prompt)
        key = self._key(request)  # in the caller's thread: the dispatcher's is busy
        with self._cond:
            self._start()
            call = _Call(request, key, time.monotonic(), self._running)
            self._pending.append(call)
            self._cond.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    def _key(self, request: AsrRequest) -> Hashable | None:
        try:
            key: Hashable | None = self._engine.batch_key(request)
        except Exception:  # a forecast only: the decode alone raises the error where it belongs
            return None
        return key

    def stats(self) -> dict[str, Any]:
        """Decodes per batch size, the calls they served, and the calls queued now."""
        with self._cond:
            sizes = dict(sorted(self.batch_sizes.items()))
            waited, retried, pending = self.waited, self.retried, len(self._pending)
        return {"batches": sum(sizes.values()), "calls": sum(k * v for k, v in sizes.items()),
                "sizes": sizes, "waited": waited, "retried": retried, "pending": pending}

    # --- the dispatcher thread -----------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:  # lazily, so an engine that is never used costs no thread
            self._thread = threading.Thread(target=self._serve, name="asr-batcher", daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            self._run(batch)
            with self._cond:
                self._running = False

    def _next_batch(self) -> list[_Call]:
        with self._cond:
            while not self._pending:
                self._cond.wait()
            first = self._pending[0]
            if first.behind and first.key is not None:  # company is likely: wait out the window
                deadline = first.arrived + self._window_s
                self.waited += int(len(self._alike(first)) < self._max
                                   and deadline > time.monotonic())
                while (len(self._alike(first)) < self._max
                       and (left := deadline - time.monotonic()) > 0):
                    self._cond.wait(left)
            batch = self._alike(first)
            self._pending = [call for call in self._pending if call not in batch]
            self._running = True
            self.batch_sizes[len(batch)] += 1
            return batch

    def _alike(self, first: _Call) -> list[_Call]:
        """The oldest call and the queued calls that can share its decode (lock held)."""
        if first.key is None:
            return [first]
        return [call for call in self._pending if call.key == first.key][: self._max]

    def _run(self, batch: list[_Call]) -> None:
        try:
            results = self._decode(batch)
        except BaseException as error:  # the dispatcher must outlive any error
            if len(batch) == 1:
                batch[0].error = error
                batch[0].done.set()
                return
            # One session's bad request must not fail the others': each is decoded alone, so
            # every caller gets its own result or its own error.
            with self._cond:
                self.retried += len(batch)
            for call in batch:
                self._run([call])
            return
        for call, result in zip(batch, results, strict=True):
            call.result = result
            call.done.set()

    def _decode(self, batch: list[_Call]) -> list[Transcription]:
        if len(batch) == 1:  # the single path, exactly as without batching
            request = batch[0].request
            return [self._engine.transcribe(request.audio, request.language, prompt=request.prompt)]
        results: list[Transcription] = self._engine.transcribe_batch([c.request for c in batch])
        if len(results) != len(batch):
            raise RuntimeError(f"engine returned {len(results)} results for {len(batch)} requests")
        return results


def wrap(engine: ASR, settings: Settings) -> ASR:
    """The engine behind a batcher when it can decode batches and batching is on."""
    if settings.asr_batch_window_ms <= 0 or settings.asr_batch_max < 2:
        return engine
    if not isinstance(engine, BatchASR):
        return engine
    batching: ASR = BatchingAsr(engine, window_ms=settings.asr_batch_window_ms,
                                max_batch=settings.asr_batch_max)
    return batching
