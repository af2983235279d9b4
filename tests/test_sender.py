"""A transport.Sender over real ZeroMQ sockets: a peer that stops reading is marked unreachable,
and seen taking frames again on its own, with nothing more sent to it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.asyncio

from common.frames import AudioIn
from common.transport import Sender

FRAME = AudioIn(session_id="s", seq=1, pcm=b"\0" * 65536)


async def _until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll `condition` (a flag the sender's own task sets: there is no event to wait on)."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.02) + 1):
        if condition() or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    return condition()


async def _drain(pull: zmq.asyncio.Socket) -> None:
    while True:
        await pull.recv()


def test_a_stalled_peer_is_seen_taking_frames_again(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, bool]:
        context = zmq.asyncio.Context()
        pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
        for sock, option in ((pull, zmq.RCVHWM), (push, zmq.SNDHWM)):
            sock.setsockopt(option, 1)
            sock.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.IMMEDIATE, 1)
        pull.bind(f"ipc://{tmp_path}/peer.sock")
        push.connect(f"ipc://{tmp_path}/peer.sock")
        sender = Sender(push, "peer", maxsize=1000, patience_s=0.2)
        tasks = [asyncio.create_task(sender.run())]
        try:
            for _ in range(400):  # 26 MB the peer never reads: past every buffer on the way
                sender.put(FRAME)
            stalled = await _until(lambda: not sender.reachable, 30)
            tasks.append(asyncio.create_task(_drain(pull)))  # the peer reads again
            back = await _until(lambda: sender.reachable, 10)  # with nothing more sent to it
            return stalled, back
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            pull.close()
            push.close()
            context.term()

    stalled, back = asyncio.run(scenario())
    assert stalled, "a peer that reads nothing was never marked unreachable"
    assert back, "the peer reads again but the sender still calls it unreachable"
