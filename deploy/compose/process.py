"""One Inzwa program per container: `inzwa serve PROGRAM` and its probe, `inzwa health`.

Under supervisord the five processes share a host: ipc sockets, one metrics directory, a
watchdog. In containers each process is alone, so this module gives it what the host gave:
its own /metrics port (Prometheus scrapes each container; the gateway's multiprocess collector
cannot see other containers), an address its peers can reach when a service has replicas, and
a probe that says whether it is serving.
"""

from __future__ import annotations

import os
import runpy
import socket
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal, cast

from common.settings import Settings, get_settings

PROGRAMS = ("orchestrator", "asr_worker", "llm_worker", "tts_worker", "gateway")
WorkerKindName = Literal["asr", "llm", "tts"]
PROBE_TIMEOUT_S = 3.0


def worker_kind(program: str) -> WorkerKindName | None:
    return cast(WorkerKindName, program.split("_")[0]) if program.endswith("_worker") else None


def _program_file(settings: Settings) -> Path:
    return settings.run_dir / "program"


def advertise(settings: Settings, kind: WorkerKindName) -> str | None:
    """Point this worker's work endpoint at an address peers reach (replicas differ there).

    Sets the endpoint's environment variable, since every module reads the settings afresh
    from the environment (get_settings is cleared afterwards)."""
    host = settings.advertise_host
    if not host or settings.zmq_transport != "tcp":
        return None
    if host == "auto":
        host = socket.gethostbyname(socket.gethostname())
    port = settings.work_endpoint(kind, 0).rpartition(":")[2]
    endpoint = f"tcp://{host}:{port}"
    os.environ[f"INZWA_{kind.upper()}_WORK_ENDPOINT"] = endpoint
    get_settings.cache_clear()
    return endpoint


def start_metrics(settings: Settings) -> None:
    """Serve this process's own Prometheus registry (a daemon thread), when a port is set."""
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.metrics_host)


def serve(program: str) -> None:
    """Run PROGRAM in this process (as `python -m PROGRAM` would), containers' way."""
    settings = get_settings()
    kind = worker_kind(program)
    if kind is not None:
        advertise(settings, kind)
        settings = get_settings()
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    _program_file(settings).write_text(program)
    start_metrics(settings)
    sys.argv = [program]
    runpy.run_module(program, run_name="__main__", alter_sys=True)


def _port_open(endpoint: str) -> bool:
    """A plane socket is bound (tcp: something accepts on its port here; ipc: its file takes
    connections). Workers and the orchestrator bind only once their model is loaded."""
    try:
        if endpoint.startswith("ipc://"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(PROBE_TIMEOUT_S)
                sock.connect(endpoint.removeprefix("ipc://"))
            return True
        port = int(endpoint.rpartition(":")[2])
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT_S):
            return True
    except (OSError, ValueError):
        return False


def _gateway_ready(settings: Settings) -> bool:
    """The gateway's own /readyz: the orchestrator alive and a READY instance of every kind."""
    scheme = "https" if settings.tls_certfile else "http"
    context = ssl._create_unverified_context() if scheme == "https" else None  # our own cert
    try:
        with urllib.request.urlopen(f"{scheme}://127.0.0.1:{settings.port}/readyz",
                                    timeout=PROBE_TIMEOUT_S, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def probe(settings: Settings, program: str) -> tuple[bool, str]:
    """Whether PROGRAM serves here, and what was checked."""
    kind = worker_kind(program)
    if program == "gateway":
        return _gateway_ready(settings), "gateway /readyz"
    if program == "orchestrator":
        endpoint = settings.bindable(settings.ingress)
    elif kind is not None:
        endpoint = settings.bindable(settings.work_endpoint(kind))
    else:
        return False, f"unknown program {program!r}"
    return _port_open(endpoint), f"{program} socket {endpoint}"


def health(program: str = "") -> int:
    """Exit status for a container health check: 0 serving, 1 not (yet)."""
    settings = get_settings()
    if not program:
        try:
            program = _program_file(settings).read_text().strip()
        except OSError:
            print("unhealthy: no program started here (inzwa serve PROGRAM)", file=sys.stderr)
            return 1
    ok, what = probe(settings, program)
    print(f"{'healthy' if ok else 'unhealthy'}: {what}")
    return 0 if ok else 1
