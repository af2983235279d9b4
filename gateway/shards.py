"""Sessions sharded over several orchestrators: which shard holds a session, and each shard's link.

A shard is one orchestrator with its own workers (docs/scaling.md). The gateway holds, per shard,
a PUSH to its ingress, a SUB to its control channel and the last StackStatus heard there, so it
knows each shard's liveness on its own: a shard that goes silent ends only its own sessions.

Placement is rendezvous (highest-random-weight) hashing of the session id over the shard names:
every gateway computes the same shard with no shared state, a resume (a `start` naming a session
that exists) lands where that conversation is stored, and adding a shard moves only the ids that
now rank it first (about 1/n of them), removing one moves only its own. A resumable session stays
with its owner even while that shard is down (it is refused until the shard is back, rather than
split over two stores); a fresh session or a REST job goes to the best-ranked shard that is ready.

With one shard (no `INZWA_SHARDS`) everything goes to it as before: no hashing, no bookkeeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from common.frames import (
    WORKER_KINDS,
    AdminAction,
    AdminReply,
    AdminRequest,
    ControlMessage,
    EgressMessage,
    ErrorEvent,
    Frame,
    ModelEntry,
    SessionEnd,
    SessionList,
    SessionListReply,
    StackStatus,
    control_decoder,
)
from common.settings import Settings
from common.transport import Plane, Sender

ControlHandler = Callable[["Shard", ControlMessage], Awaitable[None]]
SINGLE = "default"  # the one shard's name when no shards are configured


def score(shard: str, key: str) -> int:
    """The rendezvous weight of `shard` for `key`: a stable 64-bit hash of both (never Python's
    salted hash(): every gateway, every run must agree)."""
    digest = hashlib.blake2b(f"{shard}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank(key: str, names: Iterable[str]) -> list[str]:
    """Shard names, best first for `key` (ties, which a 64-bit hash makes unlikely, by name)."""
    return sorted(names, key=lambda name: (score(name, key), name), reverse=True)


def owner(key: str, names: Iterable[str]) -> str:
    """The shard that holds `key`."""
    return max(names, key=lambda name: (score(name, key), name))


@dataclass
class Shard:
    name: str
    ingress: str
    control: str
    sender: Sender | None = None
    status: StackStatus = field(default_factory=StackStatus)
    status_at: float = 0.0  # monotonic time of its last StackStatus; 0: never heard

    def alive(self, liveness_s: float) -> bool:
        return bool(self.status_at) and time.monotonic() - self.status_at < liveness_s

    def workers(self) -> dict[str, int]:
        return {kind: self.status.ready.get(kind, 0) for kind in WORKER_KINDS}

    def put(self, frame: Frame) -> bool:
        assert self.sender is not None, "Shards.start first"
        return self.sender.put(frame)


class Shards:
    def __init__(self, settings: Settings) -> None:
        specs = settings.shards or [{"name": SINGLE, "ingress": settings.ingress,
                                     "control": settings.control}]
        self.all = {s["name"]: Shard(s["name"], s["ingress"], s["control"]) for s in specs}
        self.first = next(iter(self.all.values()))
        self.single = len(self.all) == 1
        self.liveness_s = settings.heartbeat_interval_s * settings.heartbeat_liveness
        self.placed: dict[str, Shard] = {}  # open session or job id -> its shard (sharded only)

    def start(self, plane: Plane, on_control: ControlHandler) -> None:
        """A PUSH to each shard's ingress and a reader of each shard's control channel."""
        for shard in self.all.values():
            suffix = "" if self.single else f":{shard.name}"  # one shard: names as before
            sock = plane.push(shard.ingress, server="orchestrator")
            shard.sender = plane.sender(sock, f"ingress{suffix}", patience_s=2.0)
            plane.read(plane.sub(shard.control), control_decoder(), _bound(on_control, shard),
                       f"control{suffix}")

    def alive(self, shard: Shard) -> bool:
        return shard.alive(self.liveness_s)

    def ready(self, shard: Shard) -> bool:
        """Alive and with a READY instance of every worker kind: it can take a new session."""
        return self.alive(shard) and all(shard.workers()[kind] > 0 for kind in WORKER_KINDS)

    def any_alive(self) -> bool:
        return any(self.alive(shard) for shard in self.all.values())

    def choose(self, key: str, *, sticky: bool) -> Shard:
        """The shard for a session or job id. `sticky` (a session that may exist already): its
        owner, up or down. Otherwise the best-ranked ready shard (the owner when none is)."""
        if self.single:
            return self.first
        if not sticky:
            for name in rank(key, self.all):
                if self.ready(self.all[name]):
                    return self.all[name]
        return self.all[owner(key, self.all)]

    def place(self, key: str, *, sticky: bool) -> Shard:
        """Choose and remember a shard for an id that is opening now."""
        shard = self.choose(key, sticky=sticky)
        if not self.single:
            self.placed[key] = shard
        return shard

    def forget(self, key: str) -> None:
        self.placed.pop(key, None)

    def route(self, frame: Frame) -> Shard:
        """Where a frame for the orchestrator goes: its session's or job's shard; a request with
        no session (a listing, an admin call) to any live shard."""
        if self.single:
            return self.first
        key = str(getattr(frame, "session_id", ""))
        shard = self.placed.pop(key, None) if isinstance(frame, SessionEnd) else self.placed.get(key)
        if shard is not None:
            return shard
        if key.startswith("job-"):
            return self.place(key, sticky=False)
        if key:
            return self.choose(key, sticky=True)  # history, erasure: where it is stored
        live = [s for s in self.all.values() if self.alive(s)]
        return live[0] if live else self.first

    def broadcast(self, frame: Frame) -> None:
        """The same frame to every shard (the gateway's heartbeat)."""
        for shard in self.all.values():
            shard.put(frame)

    def detail(self) -> dict[str, object]:
        """Per-shard readiness for /readyz (sharded gateways only)."""
        return {name: {"orchestrator": self.alive(s), "ready": self.ready(s),
                       "workers": s.workers() if self.alive(s) else {}}
                for name, s in self.all.items()}


def _bound(handler: ControlHandler, shard: Shard) -> Callable[[ControlMessage], Awaitable[None]]:
    async def read(message: ControlMessage) -> None:
        await handler(shard, message)
    return read


Ask = Callable[[Frame, "float | None", Shard], Awaitable[EgressMessage | None]]


async def list_all_shards(shards: Shards, ask: Ask, principal: str, *, admin: bool, limit: int,
                          offset: int) -> SessionListReply | None:
    """A page of stored sessions over every shard's store: each live shard's first offset+limit,
    merged most recently active first. None when no shard answered; a silent shard's sessions
    are missing from the page (its store is unreachable), not an error for the others."""
    live = [shard for shard in shards.all.values() if shards.alive(shard)]
    replies = await asyncio.gather(*(ask(SessionList(principal=principal, admin=admin,
                                                     limit=offset + limit, offset=0), None, shard)
                                     for shard in live))
    answered = [r for r in replies if isinstance(r, SessionListReply) and not r.error]
    if not answered:
        failed = next((r for r in replies if isinstance(r, SessionListReply)), None)
        return failed
    unique = {s.session_id: s for r in answered for s in r.sessions}
    merged = sorted(unique.values(), key=lambda s: (s.last_active, s.session_id), reverse=True)
    # Shards that share one store (PostgreSQL) all list the same sessions: counted once.
    shared = len(unique) < sum(len(r.sessions) for r in answered)
    total = max(r.total for r in answered) if shared else sum(r.total for r in answered)
    return SessionListReply(sessions=merged[offset:offset + limit], total=total)


async def admin_all_shards(shards: Shards, ask: Ask, action: AdminAction
                           ) -> AdminReply | ErrorEvent | None:
    """An admin action on every live shard (a warm-up warms every shard's workers), the models
    merged: one entry per model with the instances of all shards, and a worker kind missing on
    any shard is missing. None when no shard answered."""
    live = [shard for shard in shards.all.values() if shards.alive(shard)]
    replies = await asyncio.gather(*(ask(AdminRequest(action=action), None, s) for s in live))
    error = next((r for r in replies if isinstance(r, ErrorEvent)), None)
    answered = [r for r in replies if isinstance(r, AdminReply)]
    if error is not None or not answered:
        return error
    merged: dict[tuple[str, ...], ModelEntry] = {}
    for entry in (e for reply in answered for e in reply.models):
        key = (entry.role, entry.name, entry.version, entry.sha256, entry.device, entry.engine)
        if key in merged:
            same = merged[key]
            same.instances = [*same.instances, *entry.instances]
            same.warmup_ms = {**same.warmup_ms, **entry.warmup_ms}
        else:
            merged[key] = msgspec.structs.replace(entry)
    missing = sorted({kind for reply in answered for kind in reply.missing})
    return AdminReply(models=list(merged.values()), missing=missing)


async def find_on_shards(shards: Shards, ask: Ask, request: Frame,
                         found: Callable[[EgressMessage], bool]) -> EgressMessage | None:
    """A request about one stored session (history, erasure), asked where it should be first (its
    live placement, else its owner), then on every other live shard: a fresh session placed on
    another shard while its owner was down is stored there. The first reply that `found` it;
    else a store's error if one failed, None if a shard did not answer (an absence that cannot
    be vouched for is a 503, never a 404), or the first "not found"."""
    first = shards.route(request)
    others = [s for s in shards.all.values() if s is not first and shards.alive(s)]
    replies: list[EgressMessage | None] = []
    for shard in [first, *others]:
        reply = await ask(request, None, shard)
        if reply is not None and found(reply):
            return reply
        replies.append(reply)
    failed = [r for r in replies if r is not None and bool(getattr(r, "error", False))]
    if failed or None in replies:
        return failed[0] if failed else None
    return replies[0]
