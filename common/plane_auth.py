"""Who may speak on the ZeroMQ plane: CURVE keys by identity and a ZAP handler by socket role.

Every process has one identity, and the identity names its role:

    orchestrator      the orchestrator
    watchdog          the supervisord event listener (the only one that may report a death)
    worker[-<name>]   any ASR/LLM/TTS worker process
    gateway-<id>      the gateway whose `gateway_id` is <id> (the orchestrator answers it there)

`inzwa keys --dir D` writes `<identity>.key` (public) and `<identity>.key_secret` (secret, 0600)
for each; a process loads its own secret and every public key. Each bound socket names a ZAP
domain, and the domain says which roles may connect (`DOMAINS`): a worker's key cannot open the
ingress socket, a gateway's key cannot announce a worker, and nobody but the watchdog reaches the
watchdog socket. A peer's identity reaches handlers as the message's ZAP User-Id.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.asyncio
import zmq.auth
import zmq.utils.z85

from common.frames import Role
from common.metrics import PLANE_REFUSED

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks, in the socket's own context

# socket role (its ZAP domain) -> the roles that may connect to it
DOMAINS: dict[str, frozenset[Role]] = {
    "ingress": frozenset({"gateway"}),
    "results": frozenset({"worker"}),
    "watchdog": frozenset({"watchdog"}),
    "control": frozenset({"gateway", "worker"}),
    "egress": frozenset({"orchestrator"}),
    "work": frozenset({"orchestrator"}),
}


def role_of(identity: str) -> Role | None:
    if identity in ("orchestrator", "watchdog"):
        return "orchestrator" if identity == "orchestrator" else "watchdog"
    if identity == "worker" or identity.startswith("worker-"):
        return "worker"
    if identity.startswith("gateway-") and len(identity) > len("gateway-"):
        return "gateway"
    return None


def gateway_identity(gateway_id: str) -> str:
    return f"gateway-{gateway_id}"


@dataclass
class KeyRing:
    """This process's key pair and the public keys of every known identity."""

    identity: str
    public: bytes
    secret: bytes
    known: dict[bytes, str] = field(default_factory=dict)  # public key (z85) -> identity

    @classmethod
    def load(cls, keys_dir: Path, identity: str) -> KeyRing:
        secret_file = keys_dir / f"{identity}.key_secret"
        if not secret_file.is_file():
            raise FileNotFoundError(f"no CURVE secret key for {identity!r} in {keys_dir} "
                                    "(run `inzwa keys --dir DIR`)")
        public, secret = zmq.auth.load_certificate(str(secret_file))
        assert secret is not None
        known: dict[bytes, str] = {}
        for path in sorted(keys_dir.glob("*.key")):
            if role_of(path.stem) is not None:
                known[zmq.auth.load_certificate(str(path))[0]] = path.stem
        return cls(identity, public, secret, known)

    def public_of(self, identity: str) -> bytes:
        for key, name in self.known.items():
            if name == identity:
                return key
        raise KeyError(f"no CURVE public key for {identity!r}")


def create_keys(keys_dir: Path, gateway_ids: list[str], workers: list[str] | None = None) -> list[str]:
    """Write a key pair per identity that lacks one (existing keys are kept); returns the names."""
    old = os.umask(0o077)  # secret files are the service user's alone
    try:
        keys_dir.mkdir(parents=True, exist_ok=True)
        keys_dir.chmod(0o700)
        names = ["orchestrator", "watchdog", *(workers or ["worker"]),
                 *(gateway_identity(g) for g in gateway_ids)]
        for name in names:
            if not (keys_dir / f"{name}.key_secret").exists():
                zmq.auth.create_certificates(str(keys_dir), name)
            (keys_dir / f"{name}.key_secret").chmod(0o600)
        return names
    finally:
        os.umask(old)


class ZapHandler:
    """The ZAP (RFC 27) handler of one context: admits a CURVE client whose public key is known
    and whose role the socket's domain allows; anything else is refused (and counted)."""

    def __init__(self, context: zmq.asyncio.Context, keys: KeyRing) -> None:
        self.keys = keys
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ZAP_ENDPOINT)  # before any CURVE server binds: none may go unchecked

    def decide(self, domain: str, mechanism: bytes, credentials: list[bytes]) -> str | None:
        """The peer's identity when admitted, else None."""
        if mechanism != b"CURVE" or not credentials:
            return None
        identity = self.keys.known.get(zmq.utils.z85.encode(credentials[0]))
        role = role_of(identity) if identity else None
        if identity is None or role is None or role not in DOMAINS.get(domain, frozenset()):
            return None
        return identity

    async def serve(self) -> None:
        while True:
            msg = await self.socket.recv_multipart()
            try:
                reply = self._answer(msg)
            except (ValueError, IndexError):
                log.warning("malformed ZAP request")
                continue
            await self.socket.send_multipart(reply)

    def _answer(self, msg: list[bytes]) -> list[bytes]:
        routing, _, version, request_id, domain_b, address, _, mechanism, *credentials = msg
        domain = domain_b.decode()
        identity = self.decide(domain, mechanism, credentials)
        if identity is None:
            PLANE_REFUSED.labels(domain or "none").inc()
            log.warning("plane connection refused", extra={"domain": domain,
                                                           "peer": address.decode(errors="replace")})
            status, text, user = b"400", b"not admitted", b""
        else:
            status, text, user = b"200", b"OK", identity.encode()
        return [routing, b"", version, request_id, status, text, user, b""]

    def close(self) -> None:
        self.socket.close(linger=0)

