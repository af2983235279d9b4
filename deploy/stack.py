"""Start and control the five-process stack under supervisord."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from common.private import UMASK, private_dir
from common.settings import Settings

CONFIG = Path(__file__).with_name("supervisord.conf")
# Everything the stack creates (logs naming session ids, ipc sockets, metric files) is the
# service user's alone; set on supervisord itself, so every program and log inherits it.
STACK_UMASK = UMASK
PROGRAMS = ("orchestrator", "asr_worker", "llm_worker", "tts_worker", "gateway")


def stack_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment supervisord and supervisorctl need to expand the config."""
    env = dict(os.environ if base is None else base)
    run_dir = Path(env.get("INZWA_RUN_DIR", str(settings.run_dir))).resolve()
    private_dir(run_dir)  # 0700: its logs and ipc sockets are the service user's alone
    env["INZWA_RUN_DIR"] = str(run_dir)
    env.setdefault("INZWA_PYTHON", sys.executable)
    env.setdefault("INZWA_WORKDIR", os.getcwd())
    env.setdefault("PYTHONUNBUFFERED", "1")
    for kind in ("ASR", "LLM", "TTS"):
        env.setdefault(f"INZWA_{kind}_REPLICAS", "1")
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(run_dir / "metrics"))
    return env


def fresh_metrics_dir(env: dict[str, str]) -> None:
    """Each start of the stack begins with empty multiprocess metric files."""
    metrics = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    shutil.rmtree(metrics, ignore_errors=True)
    metrics.mkdir(parents=True, mode=0o700)


def supervisord_command() -> list[str]:
    return [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(CONFIG)]


def run_foreground(settings: Settings) -> None:
    """Replace this process with supervisord, so Ctrl-C and SIGTERM reach it directly."""
    env = stack_env(settings)
    fresh_metrics_dir(env)
    print(
        f"Inzwa: ws://{settings.host}:{settings.port}/ws/audio  "
        f"(http://{settings.host}:{settings.port}/readyz; logs in {env['INZWA_RUN_DIR']})",
        flush=True,
    )
    command = supervisord_command()
    os.umask(STACK_UMASK)  # supervisord applies its own umask only when it daemonizes
    os.execve(command[0], command, env)


WORKERS = ("asr_worker", "llm_worker", "tts_worker")


def ctl_args(args: list[str]) -> list[str]:
    """Worker programs are process groups (replicas): `llm_worker` means all of them."""
    return [f"{arg}:*" if arg in WORKERS else arg for arg in args]


def ctl(settings: Settings, args: list[str]) -> int:
    """supervisorctl against the running stack, e.g. ["restart", "llm_worker"]."""
    command = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(CONFIG), *ctl_args(args)]
    return subprocess.call(command, env=stack_env(settings))
