"""Calls from several threads run by one dispatcher thread, those that queue up run as a batch.

The ASR and TTS workers serve several sessions at once, each in its own thread, in front of an
engine that runs one call at a time but can also run a batch (Whisper's `generate` over several
utterances, a VITS run over several sentences). `Batcher` is that dispatcher: a call that finds
the engine idle runs at once on the engine's single path (no window wait, the same result as
without batching); calls that arrive while it is busy queue, and the next run takes the oldest
and those queued with the same key (what the engine can put in one run), waiting at most
`window_ms` from the oldest for company. A failed batch is run again one call at a time, so a
bad request fails only its own caller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Result = TypeVar("Result")


@dataclass(eq=False)  # calls are compared by identity (their requests may hold arrays)
class _Call(Generic[Request, Result]):
    request: Request
    key: Hashable | None  # what may share a run with it; None: always alone
    arrived: float  # time.monotonic()
    behind: bool  # the engine was busy when it arrived: it may wait for company
    done: threading.Event = field(default_factory=threading.Event)
    result: Result | None = None
    error: BaseException | None = None


class Batcher(Generic[Request, Result]):
    def __init__(self, one: Callable[[Request], Result],
                 many: Callable[[list[Request]], Sequence[Result]], *,
                 window_ms: float = 5.0, max_batch: int = 8, name: str = "batcher") -> None:
        self._one, self._many, self._name = one, many, name
        self._window_s = max(0.0, window_ms) / 1000.0
        self._max = max(1, max_batch)
        self._cond = threading.Condition()
        self._pending: list[_Call[Request, Result]] = []
        self._running = False  # the dispatcher is running a call or a batch (or about to)
        self._thread: threading.Thread | None = None
        self.batch_sizes: Counter[int] = Counter()  # size -> runs of that size, for the bench
        self.waited = 0  # batches that held back for the window (a lone call never does)
        self.retried = 0  # calls run alone again after their batch failed

    def submit(self, request: Request, key: Hashable | None) -> Result:
        """Blocks the calling thread until its run (alone or in a batch) is done; an error is
        raised here, in the caller whose request caused it."""
        with self._cond:
            self._start()
            call: _Call[Request, Result] = _Call(request, key, time.monotonic(),
                                                 self._running or bool(self._pending))
            self._pending.append(call)
            self._cond.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]  # (set with done, error unset)

    def stats(self) -> dict[str, Any]:
        """Runs per batch size, the calls they served, and the calls queued now."""
        with self._cond:
            sizes = dict(sorted(self.batch_sizes.items()))
            waited, retried, pending = self.waited, self.retried, len(self._pending)
        return {"batches": sum(sizes.values()), "calls": sum(k * v for k, v in sizes.items()),
                "sizes": sizes, "waited": waited, "retried": retried, "pending": pending}

    # --- the dispatcher thread -----------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:  # lazily, so an engine that is never used costs no thread
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            self._run(batch)
            with self._cond:
                self._running = False

    def _next_batch(self) -> list[_Call[Request, Result]]:
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
            # A call that found the engine idle runs alone, at once, even if others came right
            # after it (before this thread woke): the single path is what it was promised.
            batch = self._alike(first) if first.behind else [first]
            self._pending = [call for call in self._pending if call not in batch]
            self._running = True
            self.batch_sizes[len(batch)] += 1
            return batch

    def _alike(self, first: _Call[Request, Result]) -> list[_Call[Request, Result]]:
        """The oldest call and the queued calls that can share its run (lock held)."""
        if first.key is None:
            return [first]
        return [call for call in self._pending if call.key == first.key][: self._max]

    def _run(self, batch: list[_Call[Request, Result]]) -> None:
        try:
            results = self._results(batch)
        except BaseException as error:  # the dispatcher must outlive any error
            if len(batch) == 1:
                batch[0].error = error
                batch[0].done.set()
                return
            # One session's bad request must not fail the others': each runs alone, so every
            # caller gets its own result or its own error.
            log.warning("a batch of %d failed: each runs alone", len(batch),
                        extra={"batcher": self._name})
            with self._cond:
                self.retried += len(batch)
            for call in batch:
                self._run([call])
            return
        for call, result in zip(batch, results, strict=True):
            call.result = result
            call.done.set()

    def _results(self, batch: list[_Call[Request, Result]]) -> Sequence[Result]:
        if len(batch) == 1:  # the single path, exactly as without batching
            return [self._one(batch[0].request)]
        results = self._many([call.request for call in batch])
        if len(results) != len(batch):
            raise RuntimeError(f"engine returned {len(results)} results for {len(batch)} requests")
        return results
