"""The orchestrator in-process: frames in through its handlers, frames out recorded.

The real `Orchestrator` (its `Turns`, `Recovery`, `Jobs`, session and gateway bookkeeping) runs
on the test's event loop without a socket: its only seams to the outside, the per-peer Senders,
are replaced by `Recorder`s that keep every frame put on them (after a round trip through the
wire codec, as a real Sender encodes at `put`). A test sends frames in (`ingress`, `result`,
`watchdog`) and asserts what each peer was sent (`to_worker`, `to_gateway`, `published`) —
the shape of pipecat's `run_test`, for the logic that needs no process or socket. What travels
over real sockets stays in tests/test_orchestrator.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from common.frames import (
    WORKER_KINDS,
    ControlMessage,
    EgressMessage,
    Frame,
    GatewayHeartbeat,
    Ready,
    ResultMessage,
    SessionStart,
    WorkerExited,
    WorkerKind,
    decoder,
    encode,
    work_decoder,
)
from common.settings import Settings
from orchestrator.service import Orchestrator

SID = "9c1f2e55-0d4b-4c6a-8f3e-5a7b9d1e2f30"


class Recorder:
    """Stands in for a transport.Sender: keeps what is put on it; `reachable` is settable to
    play a peer that stopped taking frames."""

    def __init__(self, peer: str, union: Any) -> None:
        self.peer = peer
        self.frames: list[Any] = []
        self.reachable = True
        self.task = None
        self.sock = None
        self._decoder: msgspec.msgpack.Decoder[Any] = (
            union if isinstance(union, msgspec.msgpack.Decoder) else decoder(union))

    def put(self, frame: Frame) -> bool:
        self.frames.append(self._decoder.decode(encode(frame)))  # what the peer would decode
        return self.reachable

    def take(self) -> list[Any]:
        frames, self.frames = self.frames, []
        return frames


class Recorded(Orchestrator):
    """The real orchestrator with Recorders for every peer it would send to."""

    def __init__(self, settings: Settings) -> None:
        self.workers: dict[str, Recorder] = {}  # by endpoint
        self.gateway_out: dict[str, Recorder] = {}  # by gateway_id
        super().__init__(settings)
        self.control = Recorder("control", ControlMessage)
        self._control = self.control  # type: ignore[assignment]

    def _connect_worker(self, endpoint: str) -> Any:
        kind = next(k for k in WORKER_KINDS for i in range(self.settings.replicas(k))
                    if self.settings.work_endpoint(k, i) == endpoint)
        return self.workers.setdefault(endpoint, Recorder(endpoint, work_decoder(kind)))

    def _connect_gateway(self, gateway_id: str, endpoint: str) -> Any:
        return self.gateway_out.setdefault(gateway_id, Recorder(gateway_id, EgressMessage))

    def _disconnect(self, sender: Any) -> None:
        sender.reachable = False


class InProcess:
    """One recorded orchestrator and the helpers to drive it."""

    def __init__(self, run_dir: Path, **overrides: Any) -> None:
        # Instances stay live for 50 s of beats unless a test asks otherwise: nothing beats here,
        # and a busy machine once stalled a test past a 1 s liveness between `ready` and its
        # first session, so that the session found no ASR to start on.
        options: dict[str, Any] = {"heartbeat_interval_s": 10, "system_prompt": "SYSTEM",
                                   "run_dir": run_dir, **overrides}
        self.settings = Settings(_env_file=None, **options)
        self.orchestrator = Recorded(self.settings)

    # --- frames in -------------------------------------------------------------------------------

    async def ingress(self, frame: Frame, peer: str = "") -> None:
        await self.orchestrator.on_ingress(frame, peer)  # type: ignore[arg-type]

    async def result(self, frame: Frame) -> None:
        await self.orchestrator.on_result(decoder(ResultMessage).decode(encode(frame)))

    async def watchdog(self, frame: WorkerExited) -> None:
        await self.orchestrator.on_watchdog(frame)

    async def ready(self, *kinds: WorkerKind, index: int = 0) -> None:
        for kind in kinds or WORKER_KINDS:
            endpoint = self.settings.work_endpoint(kind, index)
            await self.result(Ready(kind=kind, instance_id=f"{kind}-{index}", endpoint=endpoint))

    async def start(self, session_id: str = SID, *, gateway_id: str = "gw0", principal: str = "p1",
                    peer: str = "") -> None:
        await self.ingress(GatewayHeartbeat(gateway_id=gateway_id, incarnation="i1"), peer)
        await self.ingress(SessionStart(session_id=session_id, gateway_id=gateway_id,
                                        principal=principal), peer)

    # --- frames out ------------------------------------------------------------------------------

    def to_worker(self, kind: WorkerKind, index: int = 0) -> list[Any]:
        recorder = self.orchestrator.workers.get(self.settings.work_endpoint(kind, index))
        return recorder.take() if recorder is not None else []

    def to_gateway(self, gateway_id: str = "gw0") -> list[Any]:
        recorder = self.orchestrator.gateway_out.get(gateway_id)
        return recorder.take() if recorder is not None else []

    def published(self) -> list[Any]:
        return self.orchestrator.control.take()
