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
import sys
from pathlib import Path
from typing import Literal, cast

from common.settings import Settings, get_settings
from deploy.compose.probe import NO_PROGRAM, PROGRAM_FILE, PROGRAMS, check, describe, record

__all__ = ["PROGRAMS", "advertise", "health", "probe", "serve", "target", "worker_kind"]
WorkerKindName = Literal["asr", "llm", "tts"]


def worker_kind(program: str) -> WorkerKindName | None:
    return cast(WorkerKindName, program.split("_")[0]) if program.endswith("_worker") else None


def _program_file(settings: Settings) -> Path:
    return settings.run_dir / PROGRAM_FILE


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
    # Resolved before advertise(): `inzwa health` resolved it from the container's own
    # environment, which advertise() does not change.
    where = target(settings, program)
    kind = worker_kind(program)
    if kind is not None:
        advertise(settings, kind)
        settings = get_settings()
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    _program_file(settings).write_text(program)
    if where is not None:
        record(settings.run_dir, program, where)  # `inzwa health` probes it without the settings
    start_metrics(settings)
    sys.argv = [program]
    runpy.run_module(program, run_name="__main__", alter_sys=True)


def target(settings: Settings, program: str) -> str | None:
    """What says PROGRAM serves here: the gateway's own /readyz (the orchestrator alive and a
    READY instance of every kind), else the plane socket it binds; None: no such program."""
    kind = worker_kind(program)
    if program == "gateway":
        scheme = "https" if settings.tls_certfile else "http"
        return f"{scheme}://127.0.0.1:{settings.port}/readyz"
    if program == "orchestrator":
        return settings.bindable(settings.ingress)
    if kind is not None:
        return settings.bindable(settings.work_endpoint(kind))
    return None


def probe(settings: Settings, program: str) -> tuple[bool, str]:
    """Whether PROGRAM serves here, and what was checked."""
    where = target(settings, program)
    if where is None:
        return False, f"unknown program {program!r}"
    return check(where), describe(program, where)


def health(program: str = "") -> int:
    """Exit status for a container health check: 0 serving, 1 not (yet), from the settings
    (deploy.compose.probe.health answers first from what `inzwa serve` recorded)."""
    settings = get_settings()
    if not program:
        try:
            program = _program_file(settings).read_text().strip()
        except OSError:
            print(NO_PROGRAM, file=sys.stderr)
            return 1
    ok, what = probe(settings, program)
    print(f"{'healthy' if ok else 'unhealthy'}: {what}")
    return 0 if ok else 1
