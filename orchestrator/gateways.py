"""The gateways the orchestrator answers: where each one listens, and whether it is alive.

No frame says where its answer goes: a gateway is answered on the endpoint configured for its
`gateway_id` (settings.gateway_egress: the ipc convention run_dir/plane/egress-<id>.sock, or an
explicit map for tcp), through one Sender of its own, so a slow or dead gateway only ever
fills and drops its own queue. Gateways heartbeat over ingress; one silent for
heartbeat_interval_s * heartbeat_liveness is gone, and so are its sessions.

A gateway declared gone may only have stalled (a long GC pause, SIGSTOP, a frozen VM): its
clients' sockets are still open. A frame sent to it then would be dropped (nothing takes it), so
the ids of the sessions ended are kept (`orphans`, for ORPHANS_KEPT_S) and, when the same
incarnation heartbeats again, handed back to be told that their session ended.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from common.frames import Frame
from common.metrics import DROPPED_FRAMES
from common.settings import Settings
from common.transport import Sender

log = logging.getLogger(__name__)

Connect = Callable[[str, str], Sender]  # (gateway_id, endpoint) -> a sender to it
ORPHANS_KEPT_S = 600.0  # how long the sessions of a silent gateway are remembered for its return
ORPHANS_MAX = 10000  # ... and how many, per gateway


@dataclass
class GatewayLink:
    gateway_id: str
    sender: Sender
    last_seen: float = field(default_factory=time.monotonic)
    incarnation: str = ""


@dataclass
class Orphans:
    """The sessions a silent gateway held when it was declared gone."""

    incarnation: str
    since: float = field(default_factory=time.monotonic)
    session_ids: list[str] = field(default_factory=list)


class Gateways:
    def __init__(self, settings: Settings, connect: Connect, disconnect: Callable[[Sender], None]) -> None:
        self.settings = settings
        self.liveness_s = settings.heartbeat_interval_s * settings.heartbeat_liveness
        self._connect = connect
        self._disconnect = disconnect
        self.links: dict[str, GatewayLink] = {}
        self.orphans: dict[str, Orphans] = {}

    def link(self, gateway_id: str) -> GatewayLink | None:
        """The gateway's link, opened on first contact; None for a gateway with no endpoint."""
        link = self.links.get(gateway_id)
        if link is None:
            endpoint = self.settings.gateway_egress(gateway_id)
            if endpoint is None:
                return None
            link = self.links[gateway_id] = GatewayLink(gateway_id, self._connect(gateway_id, endpoint))
        return link

    def send(self, gateway_id: str, frame: Frame) -> bool:
        """Queue a frame for a gateway (never waits); False when it was dropped."""
        link = self.link(gateway_id)
        if link is None:
            DROPPED_FRAMES.labels("not_permitted").inc()
            log.warning("no endpoint for gateway", extra={"gateway_id": gateway_id})
            return False
        return link.sender.put(frame)

    def seen(self, gateway_id: str) -> None:
        link = self.link(gateway_id)
        if link is not None:
            link.last_seen = time.monotonic()

    def beat(self, gateway_id: str, incarnation: str) -> bool:
        """A heartbeat; True when it comes from a new incarnation (the gateway restarted, so
        the sessions of the old one are gone)."""
        link = self.link(gateway_id)
        if link is None:
            return False
        link.last_seen = time.monotonic()
        restarted = bool(link.incarnation) and incarnation != link.incarnation
        link.incarnation = incarnation
        return restarted

    def reap(self) -> list[str]:
        """Forget gateways silent past their liveness; returns their ids."""
        now = time.monotonic()
        horizon = now - self.liveness_s
        silent = [g for g, link in self.links.items() if link.last_seen < horizon]
        for gateway_id in silent:
            link = self.links.pop(gateway_id)
            self._disconnect(link.sender)
            self.orphans[gateway_id] = Orphans(link.incarnation)
            log.warning("gateway silent: its sessions end", extra={"gateway_id": gateway_id})
        for gateway_id in [g for g, o in self.orphans.items() if o.since < now - ORPHANS_KEPT_S]:
            del self.orphans[gateway_id]
        return silent

    def orphan(self, gateway_id: str, session_id: str) -> None:
        """A session ended because its gateway went silent: tell it if that gateway returns."""
        orphans = self.orphans.get(gateway_id)
        if orphans is not None and len(orphans.session_ids) < ORPHANS_MAX:
            orphans.session_ids.append(session_id)

    def returned(self, gateway_id: str, incarnation: str) -> list[str]:
        """A heartbeat: the sessions ended while this gateway was silent, if it is the same
        incarnation (it only stalled; its clients still wait). A new one has no such clients."""
        orphans = self.orphans.pop(gateway_id, None)
        if orphans is None or not orphans.incarnation or orphans.incarnation != incarnation:
            return []
        return orphans.session_ids
