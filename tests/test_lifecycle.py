"""The stack's own lifecycle: orchestrator death, graceful stop, no stray processes.

All on the scripted fake engines (`fake_stack`, FAKE_ENGINES): supervision, readiness, replicas
and restarts are the same processes and sockets whatever the models, and a fake stack is READY
without loading any (the real models' turns are the e2e, accuracy and browser tests' subject).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from gateway.client import talk
from tests.conftest import FAKE_ENGINES, FAKE_TTS_MS_PER_CHAR
from tests.loopback import LOOPBACK
from tests.stack import ROOT, Stack

pytestmark = pytest.mark.e2e

START = json.dumps({"type": "start", "codec": "pcm16", "sample_rate": 16000})


def test_orchestrator_death_ends_sessions_with_try_again_and_the_stack_recovers(
    fake_stack: Stack, fixtures_dir: Path
) -> None:
    stack = fake_stack

    async def open_session_through_the_crash() -> tuple[list[dict], int | None]:
        async with websockets.connect(stack.url) as ws:
            await ws.send(START)
            assert json.loads(await ws.recv())["type"] == "session.started"
            os.kill(stack.pids()["orchestrator"], signal.SIGKILL)
            events = []
            try:
                while True:
                    message = await asyncio.wait_for(ws.recv(), 30)
                    if isinstance(message, str):
                        events.append(json.loads(message))
            except websockets.ConnectionClosed:
                pass
            return events, ws.close_code

    events, close_code = asyncio.run(open_session_through_the_crash())
    assert events and events[-1]["code"] == "orchestrator_unavailable"
    assert close_code == 1012
    stack.wait_ready(60)  # supervisord restarted it; the workers announce themselves again
    result = asyncio.run(talk(fixtures_dir / "q_en_capital.wav", stack.url, timeout_s=90))
    assert result.completed and not result.errors, result.summary()


def test_readyz_follows_the_orchestrator(fake_stack: Stack) -> None:
    """An orchestrator that is gone turns /readyz off (within its liveness), and back on when
    it returns. (Stopped and started by supervisorctl rather than killed: supervisord restarts a
    killed one within a second or two and the workers re-announce at once, so a kill races
    the readiness it means to observe; kill -9 is the test above.)"""
    stack = fake_stack
    assert stack.ctl("stop", "orchestrator").returncode == 0
    try:
        deadline = time.monotonic() + 30
        while stack.ready():
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        assert stack.ctl("start", "orchestrator").returncode == 0
    stack.wait_ready(60)


def test_run_stops_every_process_on_ctrl_c(tmp_path: Path) -> None:
    """`inzwa run` (what `make run` execs) in the foreground; SIGINT leaves nothing behind."""
    probe = Stack(tmp_path, **FAKE_ENGINES)  # only for its free ports and environment
    process = subprocess.Popen([str(Path(probe.env["INZWA_PYTHON"]).with_name("inzwa")), "run"],
                               env=probe.env, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        probe.wait_ready(180)
        children = probe.pids(by_process=True)
        assert len(children) == 5
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        banner = process.stdout.read().decode() if process.stdout else ""
        assert f"ws://127.0.0.1:{probe.port}/ws/audio" in banner
        for pid in children.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def test_replicas_start_announce_and_serve(tmp_path: Path, fixtures_dir: Path) -> None:
    """INZWA_*_REPLICAS start more instances of a kind (supervisord numprocs); all READY."""
    replicated = Stack(tmp_path, INZWA_LLM_REPLICAS="2", INZWA_TTS_REPLICAS="2", **FAKE_ENGINES,
                       INZWA_FAKE_TTS_MS_PER_CHAR=str(FAKE_TTS_MS_PER_CHAR), INZWA_PLAYBACK_SPEED="4")
    try:
        replicated.start()
        processes = replicated.pids(by_process=True)
        assert {"llm_worker_0", "llm_worker_1", "tts_worker_0", "tts_worker_1"} <= set(processes)
        deadline = time.monotonic() + 60
        while (workers := LOOPBACK.get(f"{replicated.http}/readyz").json()["workers"]) != {
            "asr": 1, "llm": 2, "tts": 2
        }:
            assert time.monotonic() < deadline, workers
            time.sleep(0.5)

        async def two_at_once() -> list:
            clips = [fixtures_dir / "q_en_capital.wav", fixtures_dir / "q_en_weather.wav"]
            return await asyncio.gather(*(talk(c, replicated.url, timeout_s=90) for c in clips))

        for result in asyncio.run(two_at_once()):
            assert result.completed and not result.errors, result.summary()
    finally:
        replicated.stop()


def test_a_gateway_restart_tells_clients_to_try_again(fake_stack: Stack, fixtures_dir: Path) -> None:
    stack = fake_stack

    async def open_session_through_the_restart() -> int | None:
        async with websockets.connect(stack.url) as ws:
            await ws.send(START)
            assert json.loads(await ws.recv())["type"] == "session.started"
            restart = asyncio.create_task(asyncio.to_thread(stack.ctl, "restart", "gateway"))
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 30)
            except websockets.ConnectionClosed:
                pass
            await restart
            return ws.close_code

    assert asyncio.run(open_session_through_the_restart()) == 1012  # "service restart"
    stack.wait_ready(60)
    result = asyncio.run(talk(fixtures_dir / "q_en_capital.wav", stack.url, timeout_s=90))
    assert result.completed and not result.errors, result.summary()


def test_a_killed_gateway_has_its_sessions_ended(fake_stack: Stack, tmp_path: Path) -> None:
    """kill -9 of a real `python -m gateway`: it can say nothing, so the orchestrator must notice
    its heartbeats stop and end its sessions (seen from another gateway: an admin history
    request finds the session before the kill, and not after)."""
    from common.settings import Settings
    from gateway.bridge import Bridge
    from tests.stack import free_port

    stack = fake_stack
    port = free_port()
    env = {**stack.env, "INZWA_PORT": str(port), "INZWA_GATEWAY_ID": "gw-doomed"}
    log = (tmp_path / "doomed.log").open("wb")
    process = subprocess.Popen([stack.env["INZWA_PYTHON"], "-m", "gateway"], env=env, cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    observer_settings = Settings(_env_file=None, run_dir=stack.run_dir, gateway_id="gw-observer")

    async def scenario() -> tuple[bool, bool, float]:
        observer = Bridge(observer_settings)
        await observer.start()
        try:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/audio") as ws:
                await ws.send(START)
                session_id = json.loads(await ws.recv())["session_id"]
                # its SessionStart and our request travel on different sockets: ask until found
                before = await _history_found(observer, session_id, until=True, within_s=10)
                os.kill(process.pid, signal.SIGKILL)
                killed_at = time.monotonic()
                after = await _history_found(observer, session_id, until=False, within_s=30)
                return before, after, time.monotonic() - killed_at
        finally:
            await observer.stop()

    try:
        deadline = time.monotonic() + 60
        while not _ready(port):
            assert process.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "doomed.log").read_text()[-2000:]
            time.sleep(0.3)
        found_before, found_after, elapsed_s = asyncio.run(scenario())
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    assert found_before  # the control: the orchestrator held the session while its gateway lived
    assert not found_after, f"still live {elapsed_s:.1f} s after the kill"
    print(f"session ended {elapsed_s:.1f} s after kill -9 of its gateway")


async def _history_found(observer: Any, session_id: str, *, until: bool, within_s: float) -> bool:
    """Ask for the session (as an admin) until it is found == `until`, or time runs out."""
    deadline = time.monotonic() + within_s
    while True:
        reply = await observer.history(session_id, admin=True)
        found = reply is not None and reply.found
        if found == until or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.5)


def _ready(port: int) -> bool:
    try:
        return LOOPBACK.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
