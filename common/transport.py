"""One process's ZeroMQ plane: its own context, sockets, senders, readers and tasks.

- A `Plane` owns a `zmq.asyncio.Context` of its own (never the process-global instance), every
  socket made from it and every task it spawns; `await plane.close()` cancels and awaits the
  tasks, closes the sockets with linger 0 and terminates the context.
- Every socket gets `ZMQ_MAXMSGSIZE` (a bigger message drops the connection before it is read
  into memory) and, with `curve_keys_dir`, CURVE: bound sockets are servers whose ZAP domain
  says which roles may connect (see common/plane_auth.py).
- ipc endpoints live in run_dir/plane, created 0700, each socket file chmod 0600: only the
  service user can connect.
- Sends go through a `Sender` per peer socket: a bounded queue and one task that sends from it.
  Nobody else ever waits on a peer: a reader hands a frame to `put` (never blocks) and goes
  on. A frame for a peer that does not take it within the sender's patience (dead, stalled,
  never connected: PUSH sockets set IMMEDIATE) is dropped with everything queued behind it,
  and counted in inzwa_dropped_frames_total{reason="peer_unreachable"}; a full queue drops
  the new frame ({reason="peer_queue_full"}).
- Each socket has one long-lived reader (`read_forever`): cancelling a pending `recv` can drop
  a message in pyzmq, so receives are never raced against timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import msgspec
import zmq
import zmq.asyncio

from common.frames import Frame, encode
from common.metrics import DROPPED_FRAMES
from common.plane_auth import KeyRing, ZapHandler
from common.private import private_dir
from common.settings import Settings

log = logging.getLogger(__name__)

HWM = 10_000  # frames in libzmq's own pipe per peer (ours is the Sender's queue in front of it)

Handler = Callable[[Any], Awaitable[None]]
PeerHandler = Callable[[Any, str], Awaitable[None]]


class Plane:
    def __init__(self, settings: Settings, identity: str) -> None:
        self.settings = settings
        self.identity = identity
        self.context = zmq.asyncio.Context()
        self._sockets: list[zmq.asyncio.Socket] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.keys: KeyRing | None = None
        self._zap: ZapHandler | None = None
        if settings.curve_keys_dir is not None:
            self.keys = KeyRing.load(settings.curve_keys_dir, identity)
            self._zap = ZapHandler(self.context, self.keys)
            self.spawn(self._zap.serve(), "zap")

    @property
    def curve(self) -> bool:
        return self.keys is not None

    # --- tasks ---------------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A task the plane owns: cancelled and awaited by `close`; a crash is logged."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("plane task died", extra={"task": task.get_name()},
                      exc_info=task.exception())

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sock in self._sockets:
            sock.close(linger=0)
        if self._zap is not None:
            self._zap.close()
        self.context.term()

    # --- sockets -------------------------------------------------------------------------------

    def _socket(self, kind: int) -> zmq.asyncio.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.MAXMSGSIZE, self.settings.max_message_bytes)
        if kind == zmq.PUSH:
            sock.setsockopt(zmq.IMMEDIATE, 1)
        self._sockets.append(sock)
        return sock

    def _bind(self, sock: zmq.asyncio.Socket, endpoint: str, domain: str) -> None:
        if self.keys is not None:
            sock.curve_server = True
            sock.curve_publickey, sock.curve_secretkey = self.keys.public, self.keys.secret
            sock.zap_domain = domain.encode()
        path = _ipc_path(endpoint)
        if path is not None:
            private_dir(path.parent)
        sock.bind(self.settings.bindable(endpoint))
        if path is not None:
            path.chmod(0o600)

    def _connect(self, sock: zmq.asyncio.Socket, endpoint: str, server: str) -> None:
        if self.keys is not None:
            sock.curve_serverkey = self.keys.public_of(server)
            sock.curve_publickey, sock.curve_secretkey = self.keys.public, self.keys.secret
        sock.connect(endpoint)

    def pull(self, endpoint: str, *, domain: str) -> zmq.asyncio.Socket:
        """A bound PULL socket that the roles of `domain` may push to."""
        sock = self._socket(zmq.PULL)
        self._bind(sock, endpoint, domain)
        return sock

    def pub(self, endpoint: str, *, domain: str = "control") -> zmq.asyncio.Socket:
        sock = self._socket(zmq.PUB)
        self._bind(sock, endpoint, domain)
        return sock

    def push(self, endpoint: str, *, server: str) -> zmq.asyncio.Socket:
        """A PUSH connected to the socket `server` (an identity: whose public key to expect)."""
        sock = self._socket(zmq.PUSH)
        self._connect(sock, endpoint, server)
        return sock

    def sub(self, endpoint: str, *, server: str = "orchestrator") -> zmq.asyncio.Socket:
        sock = self._socket(zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._connect(sock, endpoint, server)
        return sock

    def close_socket(self, sock: zmq.asyncio.Socket) -> None:
        if sock in self._sockets:
            self._sockets.remove(sock)
        sock.close(linger=0)

    # --- senders and readers -------------------------------------------------------------------

    def sender(self, sock: zmq.asyncio.Socket, peer: str, *, patience_s: float = 1.0) -> Sender:
        sender = Sender(sock, peer, maxsize=self.settings.zmq_send_queue, patience_s=patience_s)
        sender.task = self.spawn(sender.run(), f"send:{peer}")
        return sender

    def read(self, sock: zmq.asyncio.Socket, decoder: msgspec.msgpack.Decoder[Any],
             handler: Handler, name: str) -> None:
        self.spawn(read_forever(sock, decoder, handler), f"read:{name}")

    def read_with_peer(self, sock: zmq.asyncio.Socket, decoder: msgspec.msgpack.Decoder[Any],
                       handler: PeerHandler, name: str) -> None:
        """Like `read`, and the handler learns who sent each message: its CURVE identity (the
        ZAP User-Id), or "" without CURVE (where only the service user can connect at all)."""
        self.spawn(_read_with_peer(sock, decoder, handler, self.curve), f"read:{name}")


class Sender:
    """The one way out to a peer socket: a bounded queue and the task that sends from it."""

    def __init__(self, sock: zmq.asyncio.Socket, peer: str, *, maxsize: int,
                 patience_s: float) -> None:
        self.sock, self.peer, self.patience_s = sock, peer, patience_s
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize)
        self.reachable = True  # the last send went out (False after one timed out)
        self.dropped = 0
        self.task: asyncio.Task[Any] | None = None

    def put(self, frame: Frame) -> bool:
        """Queue a frame (encoded now: later changes to it do not travel); never waits. False
        when the queue is full or the peer did not take the last frame: it is dropped."""
        try:
            self._queue.put_nowait(encode(frame))
        except asyncio.QueueFull:
            self._drop(1, "peer_queue_full")
            return False
        return self.reachable

    def offer(self, frame: Frame) -> bool:
        """Queue a frame only if nothing is waiting (a heartbeat: while the peer is away, one
        beat waits for it and the newer ones are not piled up behind it)."""
        if not self._queue.empty():
            return False
        return self.put(frame)

    async def put_wait(self, frame: Frame, timeout_s: float) -> bool:
        """Queue a frame, waiting at most `timeout_s` for room (for producers that should slow
        down with the peer, e.g. a worker's engine stream); dropped past that."""
        try:
            await asyncio.wait_for(self._queue.put(encode(frame)), timeout_s)
        except TimeoutError:
            self._drop(1, "peer_queue_full")
            return False
        return True

    async def run(self) -> None:
        while True:
            data = await self._next()
            sent = await self._send(data)
            self._queue.task_done()
            if sent:
                self.reachable = True
                if not self._queue.empty():  # a burst: let the loop's other tasks run between frames
                    await asyncio.sleep(0)
                continue
            self.reachable = False
            stale = 1
            while not self._queue.empty():
                self._queue.get_nowait()
                self._queue.task_done()
                stale += 1
            self._drop(stale, "peer_unreachable")

    async def _next(self) -> bytes:
        """The next queued frame. While the peer is unreachable, also look every `patience_s`
        whether it takes frames again: a peer that stalled for a moment comes back without
        announcing itself, and whoever waits on `reachable` (the orchestrator's replays) must
        learn of it even when nothing else is sent to that peer."""
        while not self.reachable:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(self._queue.get(), self.patience_s)
            if await writable(self.sock, 0):
                self.reachable = True
        return await self._queue.get()

    async def _send(self, data: bytes) -> bool:
        # Sends never block (NOBLOCK): a timeout never cancels a send half-way, which could lose
        # or duplicate a message. The socket takes most frames at once; only when it cannot (no
        # admitted peer, or the peer's queue full) is it polled for room, up to `patience_s`,
        # and tried once more. (Polling before every send made a frame cost ~120 us of CPU,
        # sent and received over loopback TCP, against ~30 us this way.)
        if await self._try_send(data):
            return True
        return await writable(self.sock, self.patience_s) and await self._try_send(data)

    async def _try_send(self, data: bytes) -> bool:
        try:
            await self.sock.send(data, flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _drop(self, count: int, reason: str) -> None:
        self.dropped += count
        DROPPED_FRAMES.labels(reason).inc(count)
        log.warning("frames dropped", extra={"peer": self.peer, "reason": reason, "count": count})

    async def flush(self, timeout_s: float) -> None:
        """Wait (bounded) until everything queued has been handed to the socket."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)


async def read_forever(
    sock: zmq.asyncio.Socket, decoder: msgspec.msgpack.Decoder[Any], handler: Handler
) -> None:
    """The socket's one reader: decode each message and hand it to `handler`.

    A message that does not decode (or holds a value outside a field's Literal) is logged and
    skipped; a handler error is logged and the loop goes on, so one bad frame never stops a
    process.
    """
    while True:
        data = await sock.recv()
        message = _decode(decoder, data)
        if message is None:
            continue
        try:
            await handler(message)
        except Exception:
            log.exception("handler failed", extra={"frame": type(message).__name__})


async def _read_with_peer(sock: zmq.asyncio.Socket, decoder: msgspec.msgpack.Decoder[Any],
                          handler: PeerHandler, curve: bool) -> None:
    while True:
        frame = await sock.recv(copy=False)
        message = _decode(decoder, frame.bytes)
        if message is None:
            continue
        peer = str(frame.get("User-Id")) if curve else ""
        try:
            await handler(message, peer)
        except Exception:
            log.exception("handler failed", extra={"frame": type(message).__name__})


async def writable(sock: zmq.asyncio.Socket, timeout_s: float) -> bool:
    """Wait at most `timeout_s` until the socket can take a message (a PUSH with IMMEDIATE: a
    connected, admitted peer with room)."""
    # pyzmq's stubs give the asyncio socket the Poller's `poll` signature; this is the socket's.
    poll = cast(Callable[[int, int], Awaitable[int]], sock.poll)
    return bool(await poll(int(timeout_s * 1000), zmq.POLLOUT) & zmq.POLLOUT)


def _decode(decoder: msgspec.msgpack.Decoder[Any], data: bytes) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError included
        log.warning("dropped undecodable frame", extra={"error": str(exc)[:200]})
        return None


def _ipc_path(endpoint: str) -> Path | None:
    return Path(endpoint.removeprefix("ipc://")) if endpoint.startswith("ipc://") else None


def sync_push(settings: Settings, identity: str, endpoint: str, server: str,
              send_timeout_ms: int = 200) -> tuple[zmq.Context[zmq.Socket[bytes]], zmq.Socket[bytes]]:
    """A blocking PUSH with its own context, for the watchdog (a supervisord listener, not
    asyncio): same options and CURVE as a Plane's sockets. The caller closes both."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, send_timeout_ms)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, settings.max_message_bytes)
    if settings.curve_keys_dir is not None:
        keys = KeyRing.load(settings.curve_keys_dir, identity)
        sock.curve_serverkey = keys.public_of(server)
        sock.curve_publickey, sock.curve_secretkey = keys.public, keys.secret
    sock.connect(endpoint)
    return context, sock


async def send(sock: zmq.asyncio.Socket, frame: Frame, *, timeout_s: float = 1.0) -> bool:
    """Send one frame straight on a socket, waiting at most `timeout_s` for the peer; False if
    it did not go. For tests and one-off tools: the processes send through Senders."""
    if await writable(sock, timeout_s):
        try:
            await sock.send(encode(frame), flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False
    return False
