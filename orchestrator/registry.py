"""Worker instances by kind: who is READY, who is alive, and the PUSH socket to each.

Sessions are pinned to one instance per kind (streaming ASR state and the LLM's KV cache live
there), so the orchestrator holds one PUSH socket per instance and chooses the socket itself:
a shared PUSH would round-robin a session's frames over instances. Each socket has its own
Sender (a bounded queue and a task), so a stalled instance never holds up the caller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from common.frames import WORKER_KINDS, Frame, WorkerKind
from common.transport import Sender

log = logging.getLogger(__name__)



@dataclass
class Instance:
    kind: WorkerKind
    instance_id: str
    endpoint: str
    model: str
    sender: Sender
    last_seen: float = field(default_factory=time.monotonic)
    sessions: int = 0
    info: dict[str, str] = field(default_factory=dict)
    leaving: bool = False  # stopping: finishes its work in hand but gets nothing new


class WorkerRegistry:
    def __init__(self, liveness_s: float, connect: Callable[[str], Sender]) -> None:
        self.liveness_s = liveness_s
        self._connect = connect  # endpoint -> a sender to it (the plane's)
        self._instances: dict[str, Instance] = {}
        self._by_endpoint: dict[str, str] = {}
        self._spare_senders: dict[str, Sender] = {}

    def announce(
        self, kind: WorkerKind, instance_id: str, endpoint: str, model: str, info: dict[str, str]
    ) -> tuple[Instance, str | None]:
        """Register a READY instance; returns it and the id of an instance it replaced.

        A restarted worker binds the same endpoint under a new id: the old instance is gone
        and its sessions move to the new one.
        """
        known = self._instances.get(instance_id)
        if known is not None:
            known.last_seen = time.monotonic()
            return known, None
        replaced = self._by_endpoint.get(endpoint)
        sender = self._spare_senders.pop(endpoint, None)
        if replaced is not None and replaced in self._instances:
            sender = self._instances.pop(replaced).sender  # same peer address: keep the socket
        if sender is not None:
            # A send that timed out was to the dead process: kept, the flag would make the first
            # frame to this one (a replay) read as undelivered, and the session would wait for an
            # instance that is there until request_timeout_s failed its turn.
            sender.reachable = True
        instance = Instance(
            kind, instance_id, endpoint, model, sender or self._connect(endpoint), info=info
        )
        self._instances[instance_id] = instance
        self._by_endpoint[endpoint] = instance_id
        log.info("instance ready", extra={"kind": kind, "instance": instance_id})
        return instance, replaced

    def seen(self, instance_id: str) -> None:
        if instance_id in self._instances:
            self._instances[instance_id].last_seen = time.monotonic()

    def get(self, instance_id: str | None) -> Instance | None:
        return self._instances.get(instance_id) if instance_id else None

    def alive(self, kind: WorkerKind) -> list[Instance]:
        horizon = time.monotonic() - self.liveness_s
        return [i for i in self._instances.values() if i.kind == kind and i.last_seen >= horizon]

    def is_alive(self, instance: Instance) -> bool:
        return instance.last_seen >= time.monotonic() - self.liveness_s

    def pick(self, kind: WorkerKind) -> Instance | None:
        """The live instance of `kind` with the fewest pinned sessions."""
        candidates = [i for i in self.alive(kind) if not i.leaving]
        return min(candidates, key=lambda i: i.sessions) if candidates else None

    def serving(self, kind: WorkerKind, pinned: str | None) -> Instance | None:
        """The instance a session's work of `kind` goes to: the one it is pinned to while that
        is alive and staying, else the live instance with the fewest pinned sessions."""
        instance = self.get(pinned)
        if instance is not None and self.is_alive(instance) and not instance.leaving:
            return instance
        return self.pick(kind)

    def reap(self) -> list[Instance]:
        """Forget instances that missed their heartbeats; returns them."""
        dead = [i for i in self._instances.values() if not self.is_alive(i)]
        for instance in dead:
            self.drop(instance)
        return dead

    def by_endpoint(self, endpoint: str) -> Instance | None:
        return self._instances.get(self._by_endpoint.get(endpoint, ""))

    def drop(self, instance: Instance) -> None:
        """Forget a dead instance. Its socket stays open: a restarted process binds the same
        endpoint, and ZeroMQ reconnects to it on its own."""
        self._instances.pop(instance.instance_id, None)
        self._spare_senders[instance.endpoint] = instance.sender
        if self._by_endpoint.get(instance.endpoint) == instance.instance_id:
            del self._by_endpoint[instance.endpoint]
        log.warning("instance lost", extra={"kind": instance.kind, "instance": instance.instance_id})

    def ready_counts(self) -> dict[str, int]:
        return {kind: sum(not i.leaving for i in self.alive(kind)) for kind in WORKER_KINDS}

    def all(self) -> list[Instance]:
        return list(self._instances.values())

    def send(self, instance: Instance, frame: Frame) -> bool:
        """Queue work for an instance (never waits); False when its queue dropped it or its
        last frame did not go out (a dead or stalled instance)."""
        return instance.sender.put(frame)
