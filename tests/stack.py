"""Start the real five-process stack under supervisord on free loopback ports (tests, bench).

Everything binds to 127.0.0.1; `stop()` ends supervisord and its whole process group, and the
stack is also stopped when the test session ends.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, TypeVar

import httpx

from common.settings import Settings
from deploy.stack import (
    PROGRAMS,
    STACK_UMASK,
    ctl_args,
    fresh_metrics_dir,
    stack_env,
    supervisord_command,
)
from tests.loopback import LOOPBACK

ROOT = Path(__file__).resolve().parent.parent
ZMQ_PORTS = 40  # ports above the base that the stack may bind

FAKE_ENGINES = {"INZWA_ASR_ENGINE": "fake", "INZWA_LLM_ENGINE": "fake", "INZWA_TTS_ENGINE": "fake"}
FAKE_TTS_MS_PER_CHAR = 25  # short replies: playback is paced at real time
# Every test talks from 127.0.0.1 as one anonymous caller: a shared stack's rate limits are
# lifted (they are tested on gateways of their own in test_api_auth.py).
UNLIMITED = {"INZWA_RATE_REQUESTS_PER_MINUTE": "0", "INZWA_RATE_CONCURRENT_SESSIONS": "0"}


def fake_env(**overrides: str) -> dict[str, str]:
    """The fake-engine stacks' settings (real processes, scripted engines, replies paced out
    4x as fast as they play, no rate limits), with a test's own settings over them."""
    return {**FAKE_ENGINES, "INZWA_FAKE_TTS_MS_PER_CHAR": str(FAKE_TTS_MS_PER_CHAR),
            "INZWA_PLAYBACK_SPEED": "4", **UNLIMITED, **overrides}


class _Startable(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Startable)


@contextmanager
def serving(stack: S) -> Iterator[S]:
    """Started for the `with` block, stopped after it whatever happened (a fixture's body)."""
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (from /proc: supervisord's programs)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


class _PortBand:
    """The ports this test process hands out: below the kernel's ephemeral range (32768 up), so
    no outgoing connection takes one between our check and a stack's bind, and under
    pytest-xdist a band of its own per worker, so two workers never pick the same range. Ranges
    are handed out in turn from a random start, so one process reuses a range only after it has
    gone round its band."""

    SIZE = 2500

    def __init__(self) -> None:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
        self.low = 10000 + (int(worker) % 8 if worker.isdigit() else 0) * self.SIZE
        self.cursor = random.randrange(self.low, self.low + self.SIZE)

    def take(self, count: int) -> int:
        for _ in range(self.SIZE):
            base = self.cursor if self.cursor + count <= self.low + self.SIZE else self.low
            self.cursor = base + count
            if all(_port_free(base + i) for i in range(count)):
                return base
        raise RuntimeError(f"no {count} free ports in {self.low}-{self.low + self.SIZE}")


_PORTS = _PortBand()


def free_port() -> int:
    return _PORTS.take(1)


def free_port_range(count: int) -> int:
    return _PORTS.take(count)


class Stack:
    def __init__(self, run_dir: Path, **overrides: str) -> None:
        self.run_dir = run_dir
        self.port = free_port()
        env = {
            **os.environ,
            "INZWA_HOST": "127.0.0.1",
            "INZWA_PORT": str(self.port),
            "INZWA_ZMQ_BASE_PORT": str(free_port_range(ZMQ_PORTS)),
            "INZWA_RUN_DIR": str(run_dir),
            "INZWA_WORKDIR": str(ROOT),
            **overrides,
        }
        self.env = stack_env(Settings(), env)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/audio"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 240.0, *, wait: bool = True) -> None:
        fresh_metrics_dir(self.env)
        log = (self.run_dir / "stack.out").open("wb")
        self.process = subprocess.Popen(
            supervisord_command(), env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, umask=STACK_UMASK,  # as `inzwa run`: its files are private
        )
        if wait:
            self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"supervisord exited early:\n{self.logs()}")
            if self.ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"stack not ready after {timeout_s} s:\n{self.logs()}")

    def admin_headers(self) -> dict[str, str]:
        """The local admin token the stack's gateway wrote: admin routes (/metrics, /v1/admin/*)
        refuse anonymous callers."""
        from gateway.auth import local_admin_token

        token = local_admin_token(Settings(_env_file=None, run_dir=self.run_dir))  # type: ignore[call-arg]
        return {"Authorization": f"Bearer {token}"}

    def metric(self, name: str, label: str) -> float:
        """The sum of `name`'s labelled samples on the gateway's /metrics whose labels hold
        `label` (e.g. 'cache="audio"'): what a test reads before and after to count."""
        text = LOOPBACK.get(f"{self.http}/metrics", headers=self.admin_headers(), timeout=10).text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith(name + "{") and label in line)

    def ready(self) -> bool:
        try:
            return LOOPBACK.get(f"{self.http}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [self.env["INZWA_PYTHON"], "-m", "supervisor.supervisorctl", "-c",
                   str(ROOT / "deploy" / "supervisord.conf"), *ctl_args(list(args))]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)

    def pids(self, *, by_process: bool = False) -> dict[str, int]:
        """Running programs and their pids, by program (or by process, for replicas)."""
        out = self.ctl("status").stdout
        pids = {}
        for line in out.splitlines():
            parts = line.split()
            group, _, process = parts[0].partition(":") if parts else ("", "", "")
            if len(parts) >= 4 and parts[1] == "RUNNING" and group in PROGRAMS:
                pids[(process or group) if by_process else group] = int(parts[3].rstrip(","))
        return pids

    def logs(self, tail: int = 40) -> str:
        chunks = []
        for path in [*sorted(self.run_dir.glob("*.log")), self.run_dir / "stack.out"]:
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                chunks.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(chunks)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # supervisord stops its programs one after another and notices each exit only at its
        # next 1 s tick (~1 s a program); each program already drains on SIGTERM by itself, so
        # all of them are told at once, just after supervisord (which, shutting down, restarts
        # none): ~0.5 s for a stack instead of 3-4 s, over a dozen stacks a run.
        children = _children(self.process.pid)
        os.killpg(self.process.pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
