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
    control_decoder,
    egress_decoder,
)
from common.plane_auth import gateway_identity
from common.settings import Settings
from common.transport import Plane, Sender
from gateway.playback import Outbox, SessionClosed

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


class Bridge:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.connections: dict[str, Connection] = {}
        self.status = StackStatus()
        self.status_at = 0.0
        self.incarnation = uuid.uuid4().hex  # a restart is a new incarnation: old sessions end
        self._plane: Plane | None = None
        self._ingress: Sender | None = None
        self._pending: dict[str, asyncio.Future[EgressMessage]] = {}
        self.jobs: dict[str, asyncio.Queue[EgressMessage]] = {}

    async def start(self) -> None:
        s = self.settings
        plane = self._plane = Plane(s, gateway_identity(s.gateway_id))
        self._ingress = plane.sender(plane.push(s.ingress, server="orchestrator"), "ingress",
                                     patience_s=2.0)
        plane.read(plane.pull(s.egress, domain="egress"), egress_decoder(), self._route, "egress")
        plane.read(plane.sub(s.control), control_decoder(), self._on_control, "control")
        plane.spawn(self._watch_orchestrator(), "watch-orchestrator")
        plane.spawn(self._heartbeat(), "heartbeat")

    async def stop(self) -> None:
        if self._plane is not None:
            await self._plane.close()
            self._plane = None

    async def send(self, frame: Frame) -> bool:
        """Queue a frame for the orchestrator (never waits on it); False when it was dropped.
        Frames that name a gateway are stamped with this one's id."""
        assert self._ingress is not None
        if hasattr(frame, "gateway_id"):
            frame.gateway_id = self.settings.gateway_id
        return self._ingress.put(frame)

    async def _heartbeat(self) -> None:
        while True:
            await self.send(GatewayHeartbeat(incarnation=self.incarnation))
            await asyncio.sleep(self.settings.heartbeat_interval_s)

    def ready(self) -> tuple[bool, dict[str, object]]:
        """Ready when the orchestrator spoke recently and every worker kind has an instance."""
        fresh = self.orchestrator_alive()
        counts = {kind: self.status.ready.get(kind, 0) for kind in WORKER_KINDS} if fresh else {}
        ok = fresh and all(counts.get(kind, 0) > 0 for kind in WORKER_KINDS)
        return ok, {"orchestrator": fresh, "workers": counts}

    def register(self, session_id: str, owner: str = "") -> Connection:
        lead_s = self.settings.playback_lead_ms / 1000
        outbox = Outbox(sample_rate=self.settings.audio_out_sample_rate, lead_s=lead_s,
                        speed=self.settings.playback_speed)
        connection = Connection(session_id, outbox, owner)
        self.connections[session_id] = connection
        return connection

    def unregister(self, session_id: str) -> None:
        self.connections.pop(session_id, None)

    async def history(self, session_id: str, *, admin: bool = False,
                      principal: str = "") -> HistoryReply | None:
        """The orchestrator's view of a session's dialogue; None if it did not answer. Without
        `principal` it is found only for a live session this gateway holds; with it, for the
        caller's own session, live or stored; with `admin` (the route checked) any session."""
        reply = await self.ask(HistoryRequest(session_id=session_id, admin=admin, principal=principal))
        return reply if isinstance(reply, HistoryReply) else None

    async def list_sessions(self, principal: str, *, admin: bool, limit: int,
                            offset: int) -> SessionListReply | None:
        """A page of the caller's stored sessions (everyone's for an admin)."""
        reply = await self.ask(SessionList(principal=principal, admin=admin, limit=limit, offset=offset))
        return reply if isinstance(reply, SessionListReply) else None

    async def delete_session(self, session_id: str, principal: str, *,
                             admin: bool) -> SessionDeleted | None:
        """Erase the caller's conversation (any, for an admin); `found` False when none was."""
        reply = await self.ask(SessionDelete(session_id=session_id, principal=principal, admin=admin))
        return reply if isinstance(reply, SessionDeleted) else None

    async def admin(self, action: AdminAction) -> AdminReply | ErrorEvent | None:
        reply = await self.ask(AdminRequest(action=action))
        return reply if isinstance(reply, AdminReply | ErrorEvent) else None

    async def ask(self, request: Frame, timeout_s: float | None = None) -> EgressMessage | None:
        """One request, one reply matched by request id; None when none came in time."""
        request.request_id = uuid.uuid4().hex
        future: asyncio.Future[EgressMessage] = asyncio.get_running_loop().create_future()
        self._pending[request.request_id] = future
        try:
            if not await self.send(request):
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

    async def _route(self, frame: EgressMessage) -> None:
        future = self._pending.get(frame.request_id) if frame.request_id else None
        if future is not None:
            if not future.done():
                future.set_result(frame)
            return
        job = self.jobs.get(frame.session_id)
        if job is not None:
            job.put_nowait(frame)
            return
        connection = self.connections.get(frame.session_id)
        if connection is not None:
            connection.outbox.put(frame)

    def orchestrator_alive(self) -> bool:
        age = time.monotonic() - self.status_at
        return age < self.settings.heartbeat_interval_s * self.settings.heartbeat_liveness

    async def _watch_orchestrator(self) -> None:
        """When the orchestrator goes silent, every session here has lost its brain: end them
        with "service restart" (1012) so clients reconnect once it is back."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s / 2)
            if self.status_at and not self.orchestrator_alive():
                self._fail_sessions()

    def _fail_sessions(self) -> None:
        failure = SessionClosed("orchestrator_unavailable",
                                "the assistant is restarting; reconnect shortly", CLOSE_RESTART)
        for connection in list(self.connections.values()):
            connection.outbox.fail(failure)

    async def _on_control(self, message: ControlMessage) -> None:
        if isinstance(message, StackStatus):
            if self.status.incarnation and message.incarnation != self.status.incarnation:
                log.warning("the orchestrator restarted; its sessions are gone")
                self._fail_sessions()  # quicker than waiting for the old one to look silent
            self.status = message
            self.status_at = time.monotonic()
