"""Attacks on the ZeroMQ plane against real stacks, with a healthy session talking beside them.

Two modes, as deployed. The stacks run the scripted fake engines (`fake_stack`, FAKE_ENGINES):
what is under attack is the plane (sockets, keys, ZAP, frame sizes), which is the same whatever
the models; the healthy session beside each attack is a whole voice turn through all five
processes, and an attacker that got a forged worker or frame in would show in it as before.


- CURVE (tcp, `INZWA_CURVE_KEYS_DIR`): an attacker that knows every endpoint and the servers'
  *public* keys, but holds no admitted key (or speaks plain ZeroMQ), gets nothing in and nothing
  out: no history, no injected events, no fake worker, no forged worker death, no control
  frames. The ZAP handler's refusals are counted per socket role.
- ipc (the default): the sockets are files in run_dir/plane. These tests run as root, and file
  permissions do not stop root, so the forged-peer attacks are tested in CURVE mode; for ipc we
  check the permissions themselves (0700 directory, 0600 sockets and logs) and that another
  uid (nobody) cannot open a plane socket, with a world-open socket as the control.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
import zmq
import zmq.asyncio
import zmq.auth
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from common.frames import (
    ControlMessage,
    ErrorEvent,
    HistoryRequest,
    Ready,
    TranscriptChunk,
    WorkerExited,
    decoder,
    encode,
)
from common.plane_auth import create_keys
from gateway.client import talk
from tests.stack import Stack, fake_env, free_port, serving

pytestmark = pytest.mark.e2e

START = json.dumps({"type": "start", "codec": "pcm16", "sample_rate": 16000})
NOBODY = 65534


@pytest.fixture(scope="module")
def curve_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    keys = tmp_path_factory.mktemp("keys")
    create_keys(keys, ["gw0"])
    stack = Stack(tmp_path_factory.mktemp("curve"),
                  **fake_env(INZWA_ZMQ_TRANSPORT="tcp", INZWA_CURVE_KEYS_DIR=str(keys)))
    stack.keys = keys  # type: ignore[attr-defined]
    with serving(stack):
        yield stack


class Attacker:
    """A process on the network with its own CURVE keys (or none), the servers' public keys
    (they are public) and every endpoint."""

    def __init__(self, stack: Stack, keys_dir: Path, *, curve: bool) -> None:
        self.base = int(stack.env["INZWA_ZMQ_BASE_PORT"])
        self.context = zmq.asyncio.Context()
        self.curve = curve
        real = Path(stack.keys)  # type: ignore[attr-defined]
        self.server_keys = {name: zmq.auth.load_certificate(str(real / f"{name}.key"))[0]
                            for name in ("orchestrator", "gateway-gw0")}
        create_keys(keys_dir, ["gw0"])  # same names, different keys: not admitted
        self.public, self.secret = zmq.auth.load_certificate(str(keys_dir / "gateway-gw0.key_secret"))

    def _secure(self, sock: zmq.asyncio.Socket, server: str) -> zmq.asyncio.Socket:
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve:
            sock.curve_serverkey = self.server_keys[server]
            sock.curve_publickey, sock.curve_secretkey = self.public, self.secret
        return sock

    def push(self, offset: int, server: str = "orchestrator") -> zmq.asyncio.Socket:
        sock = self._secure(self.context.socket(zmq.PUSH), server)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # writable only once a connection is admitted
        sock.connect(f"tcp://127.0.0.1:{self.base + offset}")
        return sock

    def sub(self) -> zmq.asyncio.Socket:
        sock = self._secure(self.context.socket(zmq.SUB), "orchestrator")
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(f"tcp://127.0.0.1:{self.base + 1}")
        return sock

    def pull(self) -> tuple[zmq.asyncio.Socket, str]:
        sock = self.context.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        sock.bind(endpoint)
        return sock, endpoint

    def close(self) -> None:
        self.context.destroy(linger=0)


async def try_send(sock: zmq.asyncio.Socket, frame: Any, seconds: float = 2.0) -> bool:
    """True if the socket took the frame (a connection was made and admitted)."""
    if await sock.poll(int(seconds * 1000), zmq.POLLOUT) & zmq.POLLOUT:
        await sock.send(encode(frame), zmq.NOBLOCK)
        return True
    return False


async def received(sock: zmq.asyncio.Socket, seconds: float) -> list[bytes]:
    """Everything the socket receives within `seconds`."""
    got = []
    deadline = asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        if await sock.poll(int(left * 1000) + 1, zmq.POLLIN) & zmq.POLLIN:
            got.append(await sock.recv())
    return got


def refused(stack: Stack) -> dict[str, float]:
    """inzwa_plane_refused_total by socket role, summed over the stack's processes."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=stack.env["PROMETHEUS_MULTIPROC_DIR"])
    counts: dict[str, float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == "inzwa_plane_refused_total":
                counts[sample.labels["domain"]] = counts.get(sample.labels["domain"], 0) + sample.value
    return counts


async def open_session(url: str) -> tuple[Any, str]:
    ws = await websockets.connect(url)
    await ws.send(START)
    started = json.loads(await ws.recv())
    assert started["type"] == "session.started", started
    return ws, started["session_id"]


async def attack(stack: Stack, attacker: Attacker, victim: str) -> dict[str, list[bytes]]:
    """Every forged-peer attack at once; returns what the attacker's own sockets received."""
    reply_pull, reply_at = attacker.pull()
    work_pull, work_at = attacker.pull()
    control = attacker.sub()
    ingress, results, egress, watchdog = (attacker.push(0), attacker.push(2),
                                          attacker.push(3, "gateway-gw0"), attacker.push(4))
    egress_2 = attacker.push(3, "gateway-gw0")  # a socket per attempt: they run concurrently
    # Each attempt and each listening window on its own socket, all at once: a refused send
    # waits out its 2 s, and one after another they cost 10 s of every run for nothing.
    attempts = {
        "history": try_send(ingress, HistoryRequest(session_id=victim, reply_to=reply_at,
                                                    gateway_id="gw0", admin=True)),
        "ready": try_send(results, Ready(kind="llm", instance_id="llm-evil", endpoint=work_at)),
        "exited": try_send(watchdog, WorkerExited(kind="llm", program="llm_worker")),
        "inject": try_send(egress, TranscriptChunk(session_id=victim, text="INJECTED", is_final=True)),
        "error": try_send(egress_2, ErrorEvent(session_id=victim, code="INJECTED", fatal=True)),
    }
    sent = dict(zip(attempts, await asyncio.gather(*attempts.values()), strict=True))
    assert sent == dict.fromkeys(sent, False), f"the plane took frames from an outsider: {sent}"
    got = await asyncio.gather(received(reply_pull, 3.0), received(work_pull, 0.5),
                               received(control, 0.5))
    return dict(zip(("reply", "work", "control"), got, strict=True))


@pytest.mark.parametrize("curve", [True, False], ids=["foreign-keys", "no-curve"])
def test_an_outsider_gets_nothing_in_or_out_while_a_session_talks(
    curve_stack: Stack, fixtures_dir: Path, tmp_path: Path, curve: bool
) -> None:
    async def scenario() -> tuple[dict[str, list[bytes]], Any, list[str]]:
        attacker = Attacker(curve_stack, tmp_path / "evil", curve=curve)
        ws, victim = await open_session(curve_stack.url)
        try:
            got, healthy = await asyncio.gather(
                attack(curve_stack, attacker, victim),
                talk(fixtures_dir / "q_en_capital.wav", curve_stack.url, timeout_s=90))
            seen = await victim_events(ws, 1.0)
        finally:
            await ws.close()
            attacker.close()
        return got, healthy, seen

    before = refused(curve_stack)
    got, healthy, seen = asyncio.run(scenario())
    assert got == {"reply": [], "work": [], "control": []}
    assert healthy.completed and not healthy.errors, healthy.summary()
    assert healthy.transcript and healthy.reply_text  # the stack's LLM answered, not the forged one
    assert not any("INJECTED" in event for event in seen), seen
    after = refused(curve_stack)
    if curve:  # a CURVE client with an unknown key is refused by ZAP (and counted)
        grew = {d for d in ("ingress", "results", "watchdog", "egress", "control")
                if after.get(d, 0) > before.get(d, 0)}
        assert grew == {"ingress", "results", "watchdog", "egress", "control"}, (before, after)
    # the real LLM instance is still the only one, and serving
    result = asyncio.run(talk(fixtures_dir / "q_en_weather.wav", curve_stack.url, timeout_s=90))
    assert result.completed and not result.errors, result.summary()


async def victim_events(ws: Any, seconds: float) -> list[str]:
    events = []
    try:
        while True:
            message = await asyncio.wait_for(ws.recv(), seconds)
            if isinstance(message, str):
                events.append(message)
    except TimeoutError:
        return events


def test_a_keyholder_is_admitted_so_the_refusals_above_are_the_keys(curve_stack: Stack) -> None:
    """The control: with the real gateway key the same SUB receives the orchestrator's status."""
    async def listen() -> list[Any]:
        real = Path(curve_stack.keys)  # type: ignore[attr-defined]
        context = zmq.asyncio.Context()
        try:
            sock = context.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.curve_serverkey = zmq.auth.load_certificate(str(real / "orchestrator.key"))[0]
            public, secret = zmq.auth.load_certificate(str(real / "gateway-gw0.key_secret"))
            sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(f"tcp://127.0.0.1:{int(curve_stack.env['INZWA_ZMQ_BASE_PORT']) + 1}")
            frames = await received(sock, 3.0)
            return [decoder(ControlMessage).decode(f) for f in frames[:3]]
        finally:
            context.destroy(linger=0)

    frames = asyncio.run(listen())
    assert frames and {type(f).__name__ for f in frames} <= {"Ping", "StackStatus", "Cancel"}


# --- ipc mode (the default): the run directory is the lock ----------------------------------------


def test_the_ipc_plane_and_logs_are_the_service_users_alone(fake_stack: Stack) -> None:
    stack = fake_stack  # the default ipc plane, as the real-model stack has it
    plane = stack.run_dir / "plane"
    assert stat.S_IMODE(stack.run_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(plane.stat().st_mode) == 0o700
    sockets = sorted(plane.glob("*.sock"))
    names = {p.name for p in sockets}
    assert {"ingress.sock", "results.sock", "control.sock", "watchdog.sock",
            "egress-gw0.sock", "asr-0.sock", "llm-0.sock", "tts-0.sock"} <= names, names
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in sockets), \
        {p.name: oct(p.stat().st_mode) for p in sockets}
    logs = sorted(stack.run_dir.glob("*.log"))
    assert logs and all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in logs), \
        {p.name: oct(p.stat().st_mode) for p in logs}


CONNECT_AS = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(type(exc).__name__)
else:
    print("connected")
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("python3") is None,
                    reason="needs root to run a probe as another uid")
def test_another_user_cannot_open_a_plane_socket(fake_stack: Stack, tmp_path: Path) -> None:
    import socket

    stack = fake_stack
    def probe(path: Path) -> str:
        out = subprocess.run(["python3", "-c", CONNECT_AS, str(path)], user=NOBODY, group=NOBODY,
                             capture_output=True, text=True, timeout=30, cwd="/")
        return out.stdout.strip() or out.stderr.strip()

    open_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"inzwa-open-{os.getpid()}"
    open_dir.mkdir(mode=0o777, exist_ok=True)
    open_dir.chmod(0o777)
    control = socket.socket(socket.AF_UNIX)
    try:  # the control: the same probe reaches a socket that is open to everyone
        control.bind(str(open_dir / "open.sock"))
        control.listen(1)
        (open_dir / "open.sock").chmod(0o666)
        assert probe(open_dir / "open.sock") == "connected"
        for name in ("ingress.sock", "results.sock", "watchdog.sock", "egress-gw0.sock"):
            assert probe(stack.run_dir / "plane" / name) == "PermissionError", name
    finally:
        control.close()
        shutil.rmtree(open_dir, ignore_errors=True)


# --- one huge frame ---------------------------------------------------------------------------------


def peak_rss_kb(pid: int) -> int:
    """The process's peak resident memory (VmHWM): a big message read and freed again leaves
    VmRSS where it was, but not this."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


HUGE = 64 * 1024 * 1024  # the largest legitimate frame is ~1.5 MB


def push_huge(endpoint: str) -> bool:
    """Push one HUGE message at `endpoint`; False if no connection was made."""
    async def go() -> bool:
        context = zmq.asyncio.Context()
        try:
            sock = context.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.connect(endpoint)
            if not await sock.poll(10000, zmq.POLLOUT) & zmq.POLLOUT:
                return False
            await sock.send(b"\x00" * HUGE)
            await asyncio.sleep(3.0)  # time for the orchestrator to read it, were it allowed
            return True
        finally:
            context.destroy(linger=0)

    return asyncio.run(go())


def test_a_huge_frame_is_refused_before_it_is_read(fake_stack: Stack, fixtures_dir: Path) -> None:
    """64 MiB at the stack's ingress socket: ZMQ_MAXMSGSIZE drops the connection, the
    orchestrator's peak memory does not grow by the frame, and a session still completes a turn."""
    stack = fake_stack
    pid = stack.pids()["orchestrator"]
    before = peak_rss_kb(pid)
    assert push_huge(f"ipc://{stack.run_dir / 'plane' / 'ingress.sock'}")  # we are the service user
    grown_kb = peak_rss_kb(pid) - before
    print(f"orchestrator peak RSS {before} KiB -> +{grown_kb} KiB after a {HUGE >> 20} MiB frame")
    assert grown_kb < HUGE // 1024 // 4, f"the orchestrator grew by {grown_kb} KiB"
    assert stack.pids()["orchestrator"] == pid  # and it did not die
    result = asyncio.run(talk(fixtures_dir / "q_en_capital.wav", stack.url, timeout_s=90))
    assert result.completed and not result.errors, result.summary()


def test_without_the_size_limit_the_same_frame_is_read_into_memory(tmp_path: Path) -> None:
    """The control for the test above (it could pass for another reason): an orchestrator
    whose limit is raised above the frame does read it, and its peak memory grows by it."""
    env = {**os.environ, "INZWA_RUN_DIR": str(tmp_path), "INZWA_ZMQ_TRANSPORT": "ipc",
           "INZWA_ZMQ_MAX_MESSAGE_BYTES": str(4 * HUGE)}
    process = subprocess.Popen([sys.executable, "-m", "orchestrator"], env=env,
                               cwd=Path(__file__).resolve().parent.parent,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        socket_path = tmp_path / "plane" / "ingress.sock"
        for _ in range(100):
            if socket_path.exists():
                break
            time.sleep(0.1)
        before = peak_rss_kb(process.pid)
        assert push_huge(f"ipc://{socket_path}")
        grown_kb = peak_rss_kb(process.pid) - before
        print(f"without the limit: peak RSS {before} KiB -> +{grown_kb} KiB")
        assert grown_kb >= HUGE // 1024 // 2, f"grew by only {grown_kb} KiB"
    finally:
        process.terminate()
        process.wait(timeout=15)
