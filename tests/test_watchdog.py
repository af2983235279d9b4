"""The watchdog's restart budget and its supervisord event handling (fake RPC, real protocol)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from common.settings import Settings
from deploy.watchdog import RestartBudget, Watchdog


def test_backoff_doubles_then_the_budget_runs_out() -> None:
    budget = RestartBudget(budget=3, window_s=60, base_s=0.5, max_s=1.5)
    delays = [budget.next_delay("llm_worker:llm_worker_0", t) for t in (0, 1, 2, 3)]
    assert delays == [0.5, 1.0, 1.5, None]
    assert budget.gave_up == {"llm_worker:llm_worker_0"}


def test_old_restarts_leave_the_window() -> None:
    budget = RestartBudget(budget=2, window_s=10, base_s=1, max_s=8)
    assert budget.next_delay("tts", 0) == 1
    assert budget.next_delay("tts", 1) == 2
    assert budget.next_delay("tts", 20) == 1  # both earlier restarts are outside the window


class FakeSupervisor:
    def __init__(self) -> None:
        self.started: list[str] = []

    def startProcess(self, name: str, wait: bool) -> bool:
        self.started.append(name)
        return True


class FakeRpc:
    def __init__(self) -> None:
        self.supervisor = FakeSupervisor()


def event(name: str, payload: str) -> str:
    header = "ver:3.0 server:supervisor serial:1 pool:watchdog poolserial:1"
    return f"{header} eventname:{name} len:{len(payload)}\n{payload}"


@pytest.fixture
def watchdog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Watchdog:
    monkeypatch.setenv("INZWA_RUN_DIR", str(tmp_path))
    settings = Settings(_env_file=None, restart_budget=2, restart_backoff_s=0.01, zmq_base_port=39990)
    return Watchdog(settings, FakeRpc())


def test_an_exited_worker_is_restarted_until_its_budget_is_spent(watchdog: Watchdog, tmp_path: Path) -> None:
    payload = "processname:llm_worker_0 groupname:llm_worker from_state:RUNNING expected:0 pid:42"
    for _ in range(3):
        watchdog.handle("PROCESS_STATE_EXITED", payload)
    time.sleep(0.2)
    assert watchdog.rpc.supervisor.started == ["llm_worker:llm_worker_0"] * 2
    state = (tmp_path / "watchdog.json").read_text()
    assert '"gave_up": ["llm_worker:llm_worker_0"]' in state


def test_the_listener_protocol(watchdog: Watchdog) -> None:
    """READY, one event in, RESULT 2 OK out, as supervisord's event listener protocol has it."""
    payload = "processname:tts_worker_0 groupname:tts_worker from_state:STARTING tries:3"
    watchdog.stdin = io.StringIO(event("PROCESS_STATE_FATAL", payload))
    watchdog.stdout = io.StringIO()
    with pytest.raises(KeyError):  # the fake stdin runs dry after one event
        watchdog.serve()
    assert watchdog.stdout.getvalue().startswith("READY\nRESULT 2\nOKREADY\n")
    time.sleep(0.2)
    assert watchdog.rpc.supervisor.started == ["tts_worker:tts_worker_0"]


def test_other_events_are_ignored(watchdog: Watchdog) -> None:
    watchdog.handle("PROCESS_STATE_RUNNING", "processname:asr_worker_0 groupname:asr_worker")
    time.sleep(0.1)
    assert watchdog.rpc.supervisor.started == []


def test_deaths_are_reported_on_the_watchdog_socket_for_workers_only(tmp_path: Path) -> None:
    """The notice goes to the orchestrator's watchdog socket (not the results socket, which
    no longer accepts it); a gateway or orchestrator exit is supervisord's own business."""
    import zmq

    from common.frames import watchdog_decoder
    from deploy.watchdog import Notifier

    settings = Settings(_env_file=None, run_dir=tmp_path)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull = context.socket(zmq.PULL)
    (tmp_path / "plane").mkdir(mode=0o700)
    pull.bind(settings.watchdog)
    notifier = Notifier(settings)
    try:
        notifier.exited("gateway", 0)
        notifier.exited("llm_worker", 1, gave_up=True)
        assert pull.poll(5000)
        got = watchdog_decoder().decode(pull.recv())
        assert (got.kind, got.program, got.instance, got.gave_up) == ("llm", "llm_worker", 1, True)
        assert not pull.poll(300)  # nothing for the gateway
    finally:
        notifier.close()
        pull.close(linger=0)
        context.term()
