"""Sentences of several sessions synthesized together in one VITS run (issue 15 item 3).

With `tts_batch_max` > 1 the TTS worker synthesizes phrases of different sessions at once, each in
its own thread (`TtsWorker`), and each phrase's sentences reach the voice's inference one at a
time. `TtsBatcher` sits in front of that inference (`PiperVoice.inference`): one dispatcher thread
runs it, and the sentences that queued up while a run was going go together in the next one
(`PiperVoice.infer_batch`), first come first served.

Only sentences with the same speed share a run: VITS takes one `scales` vector (length_scale
among them) per run, so the speed is the batch key.

A lone sentence never waits: when nothing is running it is synthesized at once, on the voice's
single path (the same audio as without batching). Only sentences that queue behind a running
inference are batched, and those may wait up to `window_ms` from the first of them for more to
arrive (they have usually waited that long already, behind the running one).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from common.settings import Settings

log = logging.getLogger(__name__)


@runtime_checkable
class BatchVoice(Protocol):
    """A voice whose sentence inference can run alone or in a batch (`PiperVoice`)."""

    batches: bool
    inference: Callable[[str, float], np.ndarray] | None

    def _infer(self, phonemes: str, speed: float = 1.0) -> np.ndarray: ...

    def infer_batch(self, items: Sequence[tuple[str, float]]) -> list[np.ndarray]: ...


@dataclass(eq=False)  # calls are compared by identity
class _Call:
    phonemes: str
    speed: float  # the batch key: one run, one `scales` vector
    arrived: float  # time.monotonic()
    behind: bool  # a run was going when it arrived: it may wait for company
    done: threading.Event = field(default_factory=threading.Event)
    audio: np.ndarray | None = None
    error: BaseException | None = None


class TtsBatcher:
    """Runs a voice's sentence inferences, batching those that queue behind a running one."""

    def __init__(self, voice: BatchVoice, *, window_ms: float = 5.0, max_batch: int = 8) -> None:
        self._voice = voice
        self._window_s = max(0.0, window_ms) / 1000.0
        self._max = max(1, max_batch)
        self._cond = threading.Condition()
        self._pending: list[_Call] = []
        self._running = False  # the dispatcher is running an inference (or about to)
        self._thread: threading.Thread | None = None
        self.batch_sizes: Counter[int] = Counter()  # size -> runs of that size
        self.waited = 0  # batches that held back for the window (a lone call never does)
        self.retried = 0  # sentences run alone again after their batch failed

    def infer(self, phonemes: str, speed: float = 1.0) -> np.ndarray:
        """Blocks the calling thread until its sentence's run (alone or batched) is done; an
        error is raised here, in the caller whose sentence caused it."""
        with self._cond:
            self._start()
            call = _Call(phonemes, speed, time.monotonic(), self._running or bool(self._pending))
            self._pending.append(call)
            self._cond.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        assert call.audio is not None
        return call.audio

    def stats(self) -> dict[str, Any]:
        """Runs per batch size, the sentences they served, and the sentences queued now."""
        with self._cond:
            sizes = dict(sorted(self.batch_sizes.items()))
            waited, retried, pending = self.waited, self.retried, len(self._pending)
        return {"runs": sum(sizes.values()), "sentences": sum(k * v for k, v in sizes.items()),
                "sizes": sizes, "waited": waited, "retried": retried, "pending": pending}

    # --- the dispatcher thread -----------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:  # lazily, so a voice that is never used costs no thread
            self._thread = threading.Thread(target=self._serve, name="tts-batcher", daemon=True)
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
            if first.behind:  # company is likely: wait out the window
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
        """The oldest call and the queued calls that can share its run (lock held)."""
        return [call for call in self._pending if call.speed == first.speed][: self._max]

    def _run(self, batch: list[_Call]) -> None:
        try:
            audio = self._synthesize(batch)
        except BaseException as error:  # the dispatcher must outlive any error
            if len(batch) == 1:
                batch[0].error = error
                batch[0].done.set()
                return
            # One session's bad sentence must not fail the others': each runs alone, so every
            # caller gets its own audio or its own error.
            log.warning("a batch of %d sentences failed: each runs alone", len(batch))
            with self._cond:
                self.retried += len(batch)
            for call in batch:
                self._run([call])
            return
        for call, made in zip(batch, audio, strict=True):
            call.audio = made
            call.done.set()

    def _synthesize(self, batch: list[_Call]) -> list[np.ndarray]:
        if len(batch) == 1:  # the single path, exactly as without batching
            return [self._voice._infer(batch[0].phonemes, batch[0].speed)]
        audio = self._voice.infer_batch([(call.phonemes, call.speed) for call in batch])
        if len(audio) != len(batch):
            raise RuntimeError(f"voice returned {len(audio)} results for {len(batch)} sentences")
        return audio


def batching(settings: Settings) -> bool:
    return settings.tts_batch_max > 1


def attach(voice: Any, settings: Settings) -> TtsBatcher | None:
    """Route the voice's sentences through a batcher when batching is on and the voice can run a
    batch; the batcher (for its stats), or None when the voice is left as it was."""
    if not batching(settings) or not isinstance(voice, BatchVoice) or not voice.batches:
        return None
    batcher = TtsBatcher(voice, window_ms=settings.tts_batch_window_ms,
                         max_batch=settings.tts_batch_max)
    voice.inference = batcher.infer
    return batcher
