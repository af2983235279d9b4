"""`inzwa health` on the standard library alone: probe the target `inzwa serve` recorded.

Docker probes every container every few seconds. The settings (pydantic) and urllib cost
~0.2 CPU-s of imports per probe, five containers ~0.2 CPU-s every second on a small box. So
`inzwa serve` resolves the target once from the settings and records it in the run dir; the
probe reads it back and checks it here, without importing anything heavy. Both paths share
the checks below, so they check the same thing. Where only the settings can tell where the run
dir is (a `.env` file), or nothing was recorded, the caller falls back to the settings.
"""

from __future__ import annotations

import os
import socket
import sys
import time

PROGRAMS = ("orchestrator", "asr_worker", "llm_worker", "tts_worker", "gateway")
PROBE_TIMEOUT_S = 3.0
RUN_DIR_VARIABLE = "INZWA_RUN_DIR"
DEFAULT_RUN_DIR = ".run"  # Settings.run_dir's default (a test holds them equal)
PROGRAM_FILE = "program"
NO_PROGRAM = "unhealthy: no program started here (inzwa serve PROGRAM)"
STATUS_LINE_LIMIT = 1024  # bytes read at most for an HTTP status line


def record_path(run_dir: str | os.PathLike[str], program: str) -> str:
    return os.path.join(run_dir, f"{program}.probe")


def record(run_dir: str | os.PathLike[str], program: str, target: str) -> None:
    """Write PROGRAM's probe target; atomically, since a probe may read it meanwhile."""
    path = record_path(run_dir, program)
    partial = os.path.join(run_dir, f".{program}.probe.{os.getpid()}")
    with open(partial, "w", encoding="utf-8") as file:
        file.write(target)
    os.replace(partial, path)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read().strip()


def describe(program: str, target: str) -> str:
    return "gateway /readyz" if program == "gateway" else f"{program} socket {target}"


def check(target: str) -> bool:
    """An http(s) URL answers 200; a tcp:// or ipc:// plane endpoint accepts a connection."""
    if target.startswith(("http://", "https://")):
        return http_ready(target)
    return port_open(target)


def port_open(endpoint: str) -> bool:
    """A plane socket is bound (tcp: something accepts on its port here; ipc: its file takes
    connections). Workers and the orchestrator bind only once their model is loaded."""
    try:
        if endpoint.startswith("ipc://"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(PROBE_TIMEOUT_S)
                sock.connect(endpoint.removeprefix("ipc://"))
            return True
        with _connect("127.0.0.1", int(endpoint.rpartition(":")[2])):
            return True
    except (OSError, ValueError):
        return False


def http_ready(url: str) -> bool:
    """GET `url` answers 200. Only the status line is read; urllib alone costs ~80 ms of
    imports, more than the rest of the probe together."""
    scheme, _, rest = url.partition("://")
    address, _, path = rest.partition("/")
    host, _, port = address.rpartition(":")
    request = f"GET /{path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode()
    try:
        with _connect(host, int(port)) as raw:
            if scheme != "https":
                raw.sendall(request)
                return _status(raw) == 200
            with _tls(raw, host) as conn:
                conn.sendall(request)
                return _status(conn) == 200
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        return False


def _connect(host: str, port: int) -> socket.socket:
    """A TCP connection to an IPv4 address here. Not socket.create_connection: it resolves the
    name, and the idna codec that takes costs more imports than the rest of the probe."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(PROBE_TIMEOUT_S)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _tls(raw: socket.socket, host: str) -> socket.socket:
    import ssl  # only for a gateway serving HTTPS itself (~10 ms of imports)

    context = ssl._create_unverified_context()  # our own certificate, on loopback
    return context.wrap_socket(raw, server_hostname=host)


def _status(conn: socket.socket) -> int:
    """The status code of the response's first line (0: none within the time or size)."""
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    head = b""
    while b"\r\n" not in head and len(head) < STATUS_LINE_LIMIT:
        if time.monotonic() > deadline:
            return 0
        chunk = conn.recv(256)
        if not chunk:
            break
        head += chunk
    parts = head.split(b"\r\n", 1)[0].split()
    return int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") else 0


def run_dir() -> str | None:
    """The run dir as the settings would find it; None where only they can tell: a `.env` file
    (they read it, but an environment variable wins over it) or an odd-cased name. Paths stay
    strings here: pathlib's own imports cost ~10 ms a probe."""
    names = [name for name in os.environ if name.upper() == RUN_DIR_VARIABLE]
    if names == [RUN_DIR_VARIABLE]:
        return os.environ[RUN_DIR_VARIABLE]
    if names or os.path.exists(".env"):
        return None
    return DEFAULT_RUN_DIR


def health(program: str = "") -> int | None:
    """Exit status from the recorded target (0 serving, 1 not), or None when nothing usable
    is recorded and the settings must answer (deploy.compose.process.health)."""
    base = run_dir()
    if base is None:
        return None
    if not program:
        try:
            program = _read(os.path.join(base, PROGRAM_FILE))
        except OSError:
            print(NO_PROGRAM, file=sys.stderr)
            return 1
    if program not in PROGRAMS:
        return None
    try:
        target = _read(record_path(base, program))
    except OSError:
        return None
    if not target:
        return None
    ok = check(target)
    print(f"{'healthy' if ok else 'unhealthy'}: {describe(program, target)}")
    return 0 if ok else 1
