"""The protocol side of every worker process (Paranoid Pirate style).

A worker loads its model and warms it up *before* it builds a `WorkerRuntime`; the runtime then
binds the instance's work PULL socket, announces READY on the results socket and heartbeats
while it lives. Cancels arrive over the control SUB socket and are remembered for a while, so
a handler can stop generating for a turn that the user interrupted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

from common.frames import (
    Cancel,
    ControlMessage,
    Frame,
    Heartbeat,
    Leaving,
    Ready,
    WarmupDone,
    WarmupRequest,
    WorkerKind,
    control_decoder,
    decoder,
    reply_envelope,
)
from common.settings import Settings
from common.transport import Plane, Sender

log = logging.getLogger(__name__)

Request = TypeVar("Request")

CANCEL_MEMORY_S = 120.0
RESULT_PATIENCE_S = 30.0  # the orchestrator may be restarting: results wait this long for it


class WorkerRuntime:
    def __init__(
        self,
        kind: WorkerKind,
        settings: Settings,
        work_union: Any,
        handler: Callable[[Any], Awaitable[None]],
        model_info: dict[str, str],
    ) -> None:
        self.kind = kind
        self.settings = settings
        self.instance_id = f"{kind}-{settings.instance}-{uuid.uuid4().hex[:8]}"
        self.endpoint = settings.work_endpoint(kind)
        self.busy = 0
        self._work_decoder = decoder(work_union)
        self._handler = handler
        self._model_info = model_info
        self._cancelled: dict[tuple[str, int, str], float] = {}
        self._results: Sender | None = None  # made by serve(), in the process's own plane
        self._stopping = asyncio.Event()

    # --- what handlers use ---------------------------------------------------------------------

    async def emit(self, frame: Frame) -> bool:
        """Queue a result for the orchestrator. Waits only while the queue is full (so an
        engine slows down with the socket), bounded; past that the result is dropped and
        counted. The sending itself happens on the results Sender's task."""
        frame.ts_ns = frame.ts_ns or time.monotonic_ns()
        assert self._results is not None, "emit before serve"
        return await self._results.put_wait(frame, RESULT_PATIENCE_S)

    async def warm_up(self, request: WarmupRequest, warm: Callable[[], None]) -> None:
        """Run the engine's warm-up in a thread (an admin asked); answer with its duration."""
        started, error = time.perf_counter(), ""
        try:
            await asyncio.to_thread(warm)
        except Exception as exc:  # reported to the caller, and the worker goes on serving
            log.exception("warm-up failed")
            error = f"{type(exc).__name__}: {exc}"
        await self.emit(WarmupDone(**reply_envelope(request), kind=self.kind,
                                   instance_id=self.instance_id, error=error,
                                   elapsed_ms=(time.perf_counter() - started) * 1000))

    def is_cancelled(self, session_id: str, turn_id: int, request_id: str = "") -> bool:
        """A cancel names a turn (all its work), or one request of it, or turn -1: the session."""
        keys = ((session_id, turn_id, ""), (session_id, turn_id, request_id), (session_id, -1, ""))
        return any(key in self._cancelled for key in keys)

    # --- lifecycle -----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Bind, announce READY, serve until SIGTERM/SIGINT, drain, close the plane."""
        plane = Plane(self.settings, "worker")
        try:
            results = plane.push(self.settings.results, server="orchestrator")
            self._results = plane.sender(results, "results", patience_s=RESULT_PATIENCE_S)
            work = plane.pull(self.endpoint, domain="work")
            control = plane.sub(self.settings.control)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stopping.set)
            await self.emit(self._ready())
            log.info("ready", extra={"instance": self.instance_id, "endpoint": self.endpoint})
            plane.read(work, self._work_decoder, self._handler, "work")
            plane.read(control, control_decoder(), self._on_control, "control")
            plane.spawn(self._heartbeat(), "heartbeat")
            await self._stopping.wait()
            await self._drain()
        finally:
            await plane.close()

    async def _drain(self) -> None:
        """Graceful stop: take no new work, finish what is in hand (bounded), then go."""
        log.info("draining", extra={"instance": self.instance_id, "pid": os.getpid()})
        assert self._results is not None
        self._results.put(Leaving(kind=self.kind, instance_id=self.instance_id))
        deadline = time.monotonic() + self.settings.drain_timeout_s
        # `busy` is a plain counter the handlers keep (no event to wait on): poll it, bounded.
        while self.busy and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        self._results.put(Leaving(kind=self.kind, instance_id=self.instance_id, gone=True))
        await self._results.flush(timeout_s=0.5)
        log.info("stopped", extra={"instance": self.instance_id, "unfinished": self.busy})

    def _ready(self) -> Ready:
        return Ready(
            kind=self.kind,
            instance_id=self.instance_id,
            endpoint=self.endpoint,
            model=self._model_info.get("name", ""),
            info=self._model_info,
        )

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            beat = Heartbeat(
                kind=self.kind,
                instance_id=self.instance_id,
                busy=self.busy,
                endpoint=self.endpoint,
                model=self._model_info.get("name", ""),
                info=self._model_info,
            )
            if self._results is not None:
                self._results.offer(beat)  # never waits, never piles up: stale beats are worthless
            self._forget_old_cancels()

    async def _on_control(self, message: ControlMessage) -> None:
        if isinstance(message, Cancel):
            key = (message.session_id, message.turn_id, message.request_id)
            self._cancelled[key] = time.monotonic()

    def _forget_old_cancels(self) -> None:
        horizon = time.monotonic() - CANCEL_MEMORY_S
        for key in [k for k, t in self._cancelled.items() if t < horizon]:
            del self._cancelled[key]


class SerialWorker(Generic[Request]):
    """Serves requests one at a time, in arrival order: an engine instance runs one inference
    at a time anyway, and a queue keeps arrival order without blocking the socket reader."""

    def __init__(self) -> None:
        self.runtime: WorkerRuntime | None = None
        self._queue: asyncio.Queue[Request] = asyncio.Queue()

    async def handle(self, request: Request) -> None:
        await self._queue.put(request)

    async def run(self) -> None:
        while True:
            request = await self._queue.get()
            assert self.runtime is not None
            self.runtime.busy = self._queue.qsize() + 1
            try:
                await self.serve_one(request)
            finally:
                self.runtime.busy = self._queue.qsize()

    async def serve_one(self, request: Request) -> None:
        """One request (or warm-up); a failure is logged and the request closed, never raised."""
        assert self.runtime is not None
        try:
            if isinstance(request, WarmupRequest):
                await self.runtime.warm_up(request, self.warm)
            else:
                await self.process(request)
        except Exception:
            log.exception("request failed", extra={"kind": self.runtime.kind})
            await self.failed(request)

    async def process(self, request: Request) -> None:
        raise NotImplementedError

    def warm(self) -> None:
        """The engine's warm-up, run in a thread when an admin asks for one."""

    async def failed(self, request: Request) -> None:
        """After `process` raised: close the request so the orchestrator is not left waiting."""


async def serve_serial(
    kind: WorkerKind, settings: Settings, work_union: Any, worker: SerialWorker[Any], info: dict[str, str]
) -> None:
    """A worker process's main loop: announce, serve until SIGTERM, drain, go."""
    runtime = WorkerRuntime(kind, settings, work_union, worker.handle, info)
    worker.runtime = runtime
    serving = asyncio.create_task(worker.run())
    try:
        await runtime.serve()
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


_DONE = object()


class _Pump:
    """The engine thread's side of `iterate_in_thread`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        self.loop, self.queue = loop, queue
        self.stopped = threading.Event()

    def hand_over(self, item: Any) -> bool:
        """Put one item on the consumer's queue, waiting while it is full; False once the
        consumer has gone."""
        future = asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop)
        while not self.stopped.is_set():
            try:
                future.result(timeout=0.1)
                return True
            except concurrent.futures.TimeoutError:
                continue
        future.cancel()
        return False

    def run(self, make_iterator: Callable[[], Iterator[Any]]) -> None:
        try:  # an engine that fails to even start its stream must reach the consumer too
            iterator = make_iterator()
        except BaseException as exc:
            self.hand_over(exc)
            return
        try:
            for item in iterator:
                if not self.hand_over(item):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self.hand_over(exc)
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # stops the engine's generator (and its work) at once
        self.hand_over(_DONE)


async def iterate_in_thread(
    make_iterator: Callable[[], Iterator[Any]], maxsize: int = 8
) -> AsyncIterator[Any]:
    """Run a blocking iterator (an engine's stream) in a thread; yield its items here.

    The bounded queue gives backpressure: the engine thread waits when the consumer (the socket)
    falls behind instead of piling up frames in memory. When the consumer stops early (a
    cancelled turn), the thread is told to stop too, and it closes the engine's iterator, so
    no thread is ever left blocked on a queue nobody reads.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=maxsize)
    pump = _Pump(loop, queue)
    producer = loop.run_in_executor(None, pump.run, make_iterator)
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        pump.stopped.set()
        await asyncio.shield(producer)
