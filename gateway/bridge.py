"""The gateway's side of ZeroMQ: ingress to the orchestrator, egress back, stack status.

Each WebSocket connection registers an outbox; the one egress reader routes every frame to the
outbox of its session and never waits on a client. Outboxes are bounded generously (reply audio
arrives faster than real time and is paced out); a client that falls that far behind is
disconnected rather than slowing anyone else.

The bridge owns this gateway's ZeroMQ plane (its own context; identity gateway-<gateway_id>
under CURVE), stamps its gateway_id on every frame that carries one (the orchestrator answers
on this gateway's configured egress endpoint, never on an address a frame names), and
heartbeats the orchestrator so that its sessions end if this process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass

from common.frames import (
    WORKER_KINDS,
    AdminAction,
    AdminReply,
    AdminRequest,
    ControlMessage,
    EgressMessage,
    ErrorEvent,
    Frame,
    GatewayHeartbeat,
    HistoryReply,
    HistoryRequest,
    JobCancel,
    SessionDelete,
    SessionDeleted,
    SessionList,
    SessionListReply,
    StackStatus,
    egress_decoder,
)
from common.plane_auth import gateway_identity
from common.settings import Settings
from common.transport import Plane
from gateway.playback import Outbox, SessionClosed
from gateway.shards import Shard, Shards, admin_all_shards, find_on_shards, list_all_shards

CLOSE_RESTART = 1012  # WebSocket close code: service restart

log = logging.getLogger(__name__)

# Client-chosen session ids live in their caller's namespace: the same id from two callers names
# two sessions, so guessing or learning someone's id gets nothing (and reveals nothing).
_SESSION_NAMESPACE = uuid.UUID("5d1c9a43-3f0e-4a59-9b7e-2a4c0f6a8e11")


def scoped_session_id(principal_id: str, client_id: str) -> str:
    """The internal session id for a client-chosen one, unique to the caller."""
    return str(uuid.uuid5(_SESSION_NAMESPACE, f"{principal_id}\x00{client_id}"))


@dataclass
class Connection:
    session_id: str
    outbox: Outbox
    owner: str = ""  # the principal that opened it (REST history is theirs to read)
    shard: str = ""  # the orchestrator shard holding it (gateway/shards.py)


class Bridge:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.connections: dict[str, Connection] = {}
        self.shards = Shards(settings)  # one orchestrator, or several (INZWA_SHARDS)
        self.incarnation = uuid.uuid4().hex  # a restart is a new incarnation: old sessions end
        self._plane: Plane | None = None
        self._pending: dict[str, asyncio.Future[EgressMessage]] = {}
        self.jobs: dict[str, asyncio.Queue[EgressMessage]] = {}
        self.operators: dict[str, asyncio.Queue[EgressMessage]] = {}  # WS /v1/operator (gateway/operator.py)

    async def start(self) -> None:
        s = self.settings
        plane = self._plane = Plane(s, gateway_identity(s.gateway_id))
        self.shards.start(plane, self._on_control)
        plane.read(plane.pull(s.egress, domain="egress"), egress_decoder(), self._route, "egress")
        plane.spawn(self._watch_orchestrator(), "watch-orchestrator")
        plane.spawn(self._heartbeat(), "heartbeat")

    async def stop(self) -> None:
        if self._plane is not None:
            await self._plane.close()
            self._plane = None

    @property
    def status(self) -> StackStatus:
        """The (first) orchestrator's last StackStatus."""
        return self.shards.first.status

    @property
    def status_at(self) -> float:
        return self.shards.first.status_at

    async def send(self, frame: Frame, shard: Shard | None = None) -> bool:
        """Queue a frame for the orchestrator (never waits on it); False when it was dropped.
        Frames that name a gateway are stamped with this one's id. With several shards it goes
        to its session's shard (or `shard`), and is dropped at once when that shard is silent."""
        if hasattr(frame, "gateway_id"):
            frame.gateway_id = self.settings.gateway_id
        target = shard or self.shards.route(frame)
        if not self.shards.single and not self.shards.alive(target):
            return False
        return target.put(frame)

    async def _heartbeat(self) -> None:
        while True:
            beat = GatewayHeartbeat(incarnation=self.incarnation, gateway_id=self.settings.gateway_id)
            self.shards.broadcast(beat)  # every shard: each ends our sessions if we go silent
            await asyncio.sleep(self.settings.heartbeat_interval_s)

    def ready(self, session_id: str = "", *, sticky: bool = True) -> tuple[bool, dict[str, object]]:
        """Ready when the orchestrator spoke recently and every worker kind has an instance.
        Sharded: with `session_id`, the shard it would be placed on; without, any shard."""
        if not self.shards.single:
            if session_id:
                return self.shards.ready(self.shards.choose(session_id, sticky=sticky)), {}
            ok = any(self.shards.ready(shard) for shard in self.shards.all.values())
            return ok, {"orchestrator": self.shards.any_alive(), "shards": self.shards.detail()}
        fresh = self.orchestrator_alive()
        counts = {kind: self.status.ready.get(kind, 0) for kind in WORKER_KINDS} if fresh else {}
        ok = fresh and all(counts.get(kind, 0) > 0 for kind in WORKER_KINDS)
        return ok, {"orchestrator": fresh, "workers": counts}

    def register(self, session_id: str, owner: str = "", *, sticky: bool = True) -> Connection:
        lead_s = self.settings.playback_lead_ms / 1000
        outbox = Outbox(sample_rate=self.settings.audio_out_sample_rate, lead_s=lead_s,
                        speed=self.settings.playback_speed)
        shard = self.shards.place(session_id, sticky=sticky)
        connection = Connection(session_id, outbox, owner, shard.name)
        self.connections[session_id] = connection
        return connection

    def unregister(self, session_id: str) -> None:
        self.connections.pop(session_id, None)

    async def history(self, session_id: str, *, admin: bool = False,
                      principal: str = "") -> HistoryReply | None:
        """The orchestrator's view of a session's dialogue; None if it did not answer. Without
        `principal` it is found only for a live session this gateway holds; with it, for the
        caller's own session, live or stored; with `admin` (the route checked) any session."""
        request = HistoryRequest(session_id=session_id, admin=admin, principal=principal)
        if self.shards.single:
            reply = await self.ask(request)
        else:
            reply = await find_on_shards(self.shards, self.ask, request,
                                         lambda r: isinstance(r, HistoryReply) and r.found)
        return reply if isinstance(reply, HistoryReply) else None

    async def list_sessions(self, principal: str, *, admin: bool, limit: int,
                            offset: int) -> SessionListReply | None:
        """A page of the caller's stored sessions (everyone's for an admin)."""
        if not self.shards.single:  # each shard's store holds its own sessions
            return await list_all_shards(self.shards, self.ask, principal, admin=admin,
                                         limit=limit, offset=offset)
        reply = await self.ask(SessionList(principal=principal, admin=admin, limit=limit, offset=offset))
        return reply if isinstance(reply, SessionListReply) else None

    async def delete_session(self, session_id: str, principal: str, *,
                             admin: bool) -> SessionDeleted | None:
        """Erase the caller's conversation (any, for an admin); `found` False when none was."""
        request = SessionDelete(session_id=session_id, principal=principal, admin=admin)
        if self.shards.single:
            reply = await self.ask(request)
        else:
            reply = await find_on_shards(self.shards, self.ask, request,
                                         lambda r: isinstance(r, SessionDeleted) and r.found)
        return reply if isinstance(reply, SessionDeleted) else None

    async def admin(self, action: AdminAction) -> AdminReply | ErrorEvent | None:
        if not self.shards.single:  # every shard's workers (models merged)
            return await admin_all_shards(self.shards, self.ask, action)
        reply = await self.ask(AdminRequest(action=action))
        return reply if isinstance(reply, AdminReply | ErrorEvent) else None

    async def ask(self, request: Frame, timeout_s: float | None = None,
                  shard: Shard | None = None) -> EgressMessage | None:
        """One request, one reply matched by request id; None when none came in time."""
        request.request_id = uuid.uuid4().hex
        future: asyncio.Future[EgressMessage] = asyncio.get_running_loop().create_future()
        self._pending[request.request_id] = future
        try:
            if not await self.send(request, shard):
                return None
            return await asyncio.wait_for(future, timeout_s or self.settings.request_timeout_s + 5)
        except TimeoutError:
            return None
        finally:
            self._pending.pop(request.request_id, None)

    def open_job(self) -> tuple[str, asyncio.Queue[EgressMessage]]:
        """A job id and the queue its results arrive on (a REST request's stream)."""
        job_id = f"job-{uuid.uuid4().hex}"
        queue: asyncio.Queue[EgressMessage] = asyncio.Queue()
        self.jobs[job_id] = queue
        return job_id, queue

    async def close_job(self, job_id: str, *, finished: bool) -> None:
        """Forget a job; one its client abandoned is cancelled so its worker stops."""
        self.jobs.pop(job_id, None)
        if not finished:
            await self.send(JobCancel(session_id=job_id))
        self.shards.forget(job_id)

    async def _route(self, frame: EgressMessage) -> None:
        future = self._pending.get(frame.request_id) if frame.request_id else None
        if future is not None:
            if not future.done():
                future.set_result(frame)
            return
        operator = self.operators.get(frame.session_id)
        if operator is not None:  # an operator socket's events (bounded: a stalled one loses them)
            with contextlib.suppress(asyncio.QueueFull):
                operator.put_nowait(frame)
            return
        job = self.jobs.get(frame.session_id)
        if job is not None:
            job.put_nowait(frame)
            return
        connection = self.connections.get(frame.session_id)
        if connection is not None:
            connection.outbox.put(frame)

    def orchestrator_alive(self) -> bool:
        """The orchestrator spoke recently (sharded: any of them)."""
        return self.shards.any_alive()

    async def _watch_orchestrator(self) -> None:
        """When the orchestrator goes silent, every session here has lost its brain: end them
        with "service restart" (1012) so clients reconnect once it is back."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s / 2)
            for shard in self.shards.all.values():
                if shard.status_at and not self.shards.alive(shard):
                    self._fail_sessions(shard)

    def _fail_sessions(self, shard: Shard | None = None) -> None:
        """End the sessions of one shard (None, or with one shard: every session) with 1012."""
        failure = SessionClosed("orchestrator_unavailable",
                                "the assistant is restarting; reconnect shortly", CLOSE_RESTART)
        for connection in list(self.connections.values()):
            if shard is None or self.shards.single or connection.shard == shard.name:
                connection.outbox.fail(failure)
        if shard is not None and not self.shards.single:  # its REST jobs fail now, not at timeout
            for job_id, queue in list(self.jobs.items()):
                if self.shards.placed.get(job_id) is shard:
                    queue.put_nowait(ErrorEvent(session_id=job_id, code=failure.code,
                                                message=failure.message))

    async def _on_control(self, shard: Shard, message: ControlMessage) -> None:
        if isinstance(message, StackStatus):
            if shard.status.incarnation and message.incarnation != shard.status.incarnation:
                log.warning("the orchestrator restarted; its sessions are gone",
                            extra={"shard": shard.name})
                self._fail_sessions(shard)  # quicker than waiting for the old one to look silent
            shard.status = message
            shard.status_at = time.monotonic()
