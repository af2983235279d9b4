"""Admin requests from gateways: which models every READY instance serves, and warm-ups.

A warm-up goes to every live instance at once; the reply waits for all of them (bounded by
`request_timeout_s`) and names any kind that has no instance or did not answer, so an operator
sees a half-warm stack instead of a misleading success.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from common.frames import (
    WORKER_KINDS,
    AdminReply,
    AdminRequest,
    ErrorEvent,
    Frame,
    ModelEntry,
    WarmupDone,
    WarmupRequest,
    WorkerKind,
    reply_envelope,
)
from orchestrator.registry import WorkerRegistry

ToGateway = Callable[[str, Frame], Awaitable[None]]  # (gateway_id, frame)


@dataclass
class PendingWarmup:
    gateway_id: str
    waiting: set[str]
    deadline: float
    elapsed_ms: dict[str, float] = field(default_factory=dict)
    failed: list[WorkerKind] = field(default_factory=list)


class Admin:
    def __init__(self, registry: WorkerRegistry, to_gateway: ToGateway, timeout_s: float) -> None:
        self.registry = registry
        self._to_gateway = to_gateway
        self.timeout_s = timeout_s
        self.pending: dict[str, PendingWarmup] = {}

    async def handle(self, request: AdminRequest, gateway_id: str) -> None:
        if request.action == "models":
            await self._reply(request.request_id, gateway_id, self.models())
        elif request.action == "warmup":
            await self._start_warmup(request, gateway_id)
        else:
            error = ErrorEvent(code="bad_request", message=f"unknown admin action {request.action!r}")
            await self._reply(request.request_id, gateway_id, error)

    def models(self, elapsed_ms: dict[str, float] | None = None) -> AdminReply:
        """One entry per (role, model): its identity, device and the instances serving it."""
        entries: dict[tuple[WorkerKind, str, str], ModelEntry] = {}
        for instance in sorted(self.registry.all(), key=lambda i: i.instance_id):
            if not self.registry.is_alive(instance) or instance.leaving:
                continue
            info = instance.info
            key = (instance.kind, info.get("name", instance.model), info.get("sha256", ""))
            entry = entries.setdefault(key, ModelEntry(
                role=instance.kind, name=key[1], version=info.get("version", ""), sha256=key[2],
                device=info.get("device", ""), engine=info.get("engine", ""), instances=[],
                warmup_ms={},
            ))
            entry.instances.append(instance.instance_id)
            if elapsed_ms and instance.instance_id in elapsed_ms:
                entry.warmup_ms[instance.instance_id] = round(elapsed_ms[instance.instance_id], 1)
        served = {entry.role for entry in entries.values()}
        return AdminReply(models=list(entries.values()),
                          missing=[k for k in WORKER_KINDS if k not in served])

    async def _start_warmup(self, request: AdminRequest, gateway_id: str) -> None:
        if request.request_id in self.pending:
            return  # already under way (a repeated id cannot redirect its answer)
        instances = [i for i in self.registry.all() if self.registry.is_alive(i) and not i.leaving]
        pending = PendingWarmup(gateway_id, set(), time.monotonic() + self.timeout_s)
        self.pending[request.request_id] = pending
        for instance in instances:
            work = WarmupRequest(**reply_envelope(request))
            work.session_id = request.request_id  # a warm-up's results route by its id
            if self.registry.send(instance, work):
                pending.waiting.add(instance.instance_id)
        await self._maybe_done(request.request_id)

    async def on_warmup_done(self, done: WarmupDone) -> None:
        pending = self.pending.get(done.request_id)
        if pending is None:
            return
        pending.waiting.discard(done.instance_id)
        if done.error and done.kind:
            pending.failed.append(done.kind)
        else:
            pending.elapsed_ms[done.instance_id] = done.elapsed_ms
        await self._maybe_done(done.request_id)

    async def expire(self) -> None:
        now = time.monotonic()
        for request_id in [r for r, p in self.pending.items() if p.deadline < now]:
            await self._maybe_done(request_id, force=True)

    async def _maybe_done(self, request_id: str, *, force: bool = False) -> None:
        pending = self.pending[request_id]
        if pending.waiting and not force:
            return
        del self.pending[request_id]
        reply = self.models(pending.elapsed_ms)
        silent = {i.kind for i in self.registry.all() if i.instance_id in pending.waiting}
        warmed = {m.role for m in reply.models if m.warmup_ms}
        reply.missing = sorted(set(reply.missing) | silent | set(pending.failed)
                               | (set(WORKER_KINDS) - warmed))
        await self._reply(request_id, pending.gateway_id, reply)

    async def _reply(self, request_id: str, gateway_id: str, frame: AdminReply | ErrorEvent) -> None:
        frame.request_id = frame.session_id = request_id
        await self._to_gateway(gateway_id, frame)
