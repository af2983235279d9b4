"""Two shards on one machine for the tests: two orchestrators with their own workers, one gateway.

Each shard is a `Stack` of its own (supervisord, watchdog, orchestrator, workers; its own run
directory, so its own ipc plane and its own conversation store). Shard "a"'s gateway is given
both shards (INZWA_SHARDS); shard "b"'s own gateway is stopped once b is up, and b's orchestrator
answers shard a's gateway at that gateway's egress socket (INZWA_GATEWAY_EGRESS_ENDPOINTS), as
each shard's orchestrator would on its own host. The plane is ipc, or TCP with CURVE (`keys_dir`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from common.plane_auth import create_keys
from common.settings import Settings
from tests.loopback import LOOPBACK
from tests.stack import ZMQ_PORTS, Stack, free_port_range

GATEWAY_ID = "gw0"  # the one gateway (shard a's)


def plane(run_dir: Path, base_port: int, tcp: bool) -> Settings:
    """The endpoints of a stack whose run directory is `run_dir` (ipc) or whose ports start at
    `base_port` (tcp)."""
    return Settings(_env_file=None, run_dir=run_dir, gateway_id=GATEWAY_ID,  # type: ignore[call-arg]
                    zmq_transport="tcp" if tcp else "ipc", zmq_base_port=base_port)


def two_port_ranges() -> tuple[int, int]:
    first = free_port_range(ZMQ_PORTS)
    for _ in range(50):
        second = free_port_range(ZMQ_PORTS)
        if abs(second - first) >= ZMQ_PORTS:
            return first, second
    raise RuntimeError("no second free port range")


class TwoShards:
    """`keys_dir`: the plane is TCP with CURVE, as between hosts (every process of both shards
    reads the same keys directory: the orchestrators share the `orchestrator` key pair)."""

    def __init__(self, root: Path, keys_dir: Path | None = None, **overrides: str) -> None:
        tcp = keys_dir is not None
        ports = two_port_ranges()
        a, b = (plane(root / name, port, tcp) for name, port in zip("ab", ports, strict=True))
        if keys_dir is not None:
            create_keys(keys_dir, [GATEWAY_ID, "gwb"])
            overrides = {**overrides, "INZWA_ZMQ_TRANSPORT": "tcp", "INZWA_CURVE_KEYS_DIR": str(keys_dir)}
        shards = [{"name": name, "ingress": s.ingress, "control": s.control}
                  for name, s in (("a", a), ("b", b))]
        self.b = Stack(root / "b", **overrides, INZWA_GATEWAY_ID="gwb", INZWA_ZMQ_BASE_PORT=str(ports[1]),
                       INZWA_GATEWAY_EGRESS_ENDPOINTS=json.dumps({GATEWAY_ID: a.egress}))
        self.a = Stack(root / "a", **overrides, INZWA_GATEWAY_ID=GATEWAY_ID,
                       INZWA_ZMQ_BASE_PORT=str(ports[0]), INZWA_SHARDS=json.dumps(shards))
        self.stacks = {"a": self.a, "b": self.b}

    @property
    def url(self) -> str:
        return self.a.url

    def start(self, timeout_s: float = 240.0) -> None:
        self.b.start(timeout_s)
        self.b.ctl("stop", "gateway")  # one gateway for both shards: a's
        self.a.start(timeout_s)
        self.wait_shards_ready(timeout_s)

    def shard_status(self) -> dict[str, dict[str, object]]:
        """The gateway's /readyz view of each shard ({} while it does not answer)."""
        try:
            body = LOOPBACK.get(f"{self.a.http}/readyz", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return {}
        return dict(body.get("shards", {}))

    def wait_shards_ready(self, timeout_s: float = 60.0, names: tuple[str, ...] = ("a", "b")) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.shard_status()
            if all(status.get(name, {}).get("ready") for name in names):
                return
            time.sleep(0.3)
        raise TimeoutError(f"shards {names} not ready: {self.shard_status()}\n"
                           f"{self.a.logs()}\n{self.b.logs()}")

    def store(self, name: str) -> Path:
        """Shard `name`'s conversation store (the default: sqlite in its run directory)."""
        return self.stacks[name].run_dir.resolve() / "inzwa.db"

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()
