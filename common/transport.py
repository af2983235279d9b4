"""asyncio ZeroMQ helpers: socket factories with the options every socket here needs.

- PUSH sockets set IMMEDIATE so nothing queues for a peer that is not connected, and a send
  that cannot go out reports it instead of blocking the caller's event loop forever.
- Every socket closes with linger=0 so a stopping process never hangs on unsent frames.
- Each socket gets one long-lived reader task (`read_forever`): cancelling a pending `recv`
  in pyzmq can drop a message, so receives are never raced against timeouts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from common.frames import Frame, encode

log = logging.getLogger(__name__)

HWM = 10_000  # frames; PUSH blocks (never drops) past this, PUB drops


def context() -> zmq.asyncio.Context:
    return zmq.asyncio.Context.instance()


def _socket(kind: int, endpoint: str, *, bind: bool) -> zmq.asyncio.Socket:
    sock = context().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    if kind == zmq.PUSH:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    if bind:
        sock.bind(endpoint)
    else:
        sock.connect(endpoint)
    return sock


def push(endpoint: str, *, bind: bool = False) -> zmq.asyncio.Socket:
    return _socket(zmq.PUSH, endpoint, bind=bind)


def pull(endpoint: str, *, bind: bool = True) -> zmq.asyncio.Socket:
    return _socket(zmq.PULL, endpoint, bind=bind)


def pub(endpoint: str, *, bind: bool = True) -> zmq.asyncio.Socket:
    return _socket(zmq.PUB, endpoint, bind=bind)


def sub(endpoint: str, *, bind: bool = False) -> zmq.asyncio.Socket:
    sock = _socket(zmq.SUB, endpoint, bind=bind)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    return sock


async def send(sock: zmq.asyncio.Socket, frame: Frame, *, timeout_s: float = 1.0) -> bool:
    """Send one frame; False when no peer took it within `timeout_s` (peer down or stalled).

    Polling for POLLOUT first keeps the send itself non-blocking, so a timeout never cancels a
    send half-way.
    """
    data = encode(frame)
    if await sock.poll(timeout=int(timeout_s * 1000), flags=zmq.POLLOUT) & zmq.POLLOUT:
        try:
            await sock.send(data, flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False
    return False


Handler = Callable[[Any], Awaitable[None]]


async def read_forever(
    sock: zmq.asyncio.Socket, decoder: msgspec.msgpack.Decoder, handler: Handler
) -> None:
    """The socket's one reader: decode each message and hand it to `handler`.

    A message that does not decode is logged and skipped; a handler error is logged and the
    loop goes on, so one bad frame never stops a process.
    """
    while True:
        data = await sock.recv()
        try:
            message = decoder.decode(data)
        except msgspec.DecodeError as exc:
            log.warning("dropped undecodable frame", extra={"error": str(exc)})
            continue
        try:
            await handler(message)
        except Exception:
            log.exception("handler failed", extra={"frame": type(message).__name__})


def close_all() -> None:
    context().destroy(linger=0)


async def cancel_tasks(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
