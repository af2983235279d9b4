"""The watchdog: a supervisord event listener that restarts dead workers on a budget.

supervisord alone retries a failing program three times and then gives up for good, and it
tells nobody. This listener instead, on PROCESS_STATE_EXITED / FATAL of a program:

1. tells the orchestrator at once (a WorkerExited frame on the watchdog's own socket, which
   only the watchdog's identity may reach), so in-flight work moves to another instance
   without waiting for heartbeats to expire;
2. restarts the program after a backoff that doubles with each recent restart;
3. past `restart_budget` restarts within `restart_window_s`, stops restarting it and raises a
   clear alert (an ERROR log line, `watchdog.json` in the run dir, and the orchestrator's
   worker-restart metrics) instead of looping hot.

Workers run with supervisord's autorestart off; the watchdog is the one restarting them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

from common import logs
from common.frames import WorkerExited, WorkerKind, encode
from common.metrics import process_exited
from common.private import umask_private
from common.settings import Settings, get_settings
from common.transport import sync_push

log = logging.getLogger("watchdog")

KIND_OF: dict[str, WorkerKind] = {"asr_worker": "asr", "llm_worker": "llm", "tts_worker": "tts"}


class RestartBudget:
    """At most `budget` restarts of a program in `window_s`; backoff doubles with each one."""

    def __init__(self, budget: int, window_s: float, base_s: float, max_s: float) -> None:
        self.budget, self.window_s, self.base_s, self.max_s = budget, window_s, base_s, max_s
        self._restarts: dict[str, deque[float]] = defaultdict(deque)
        self.gave_up: set[str] = set()

    def next_delay(self, name: str, now: float) -> float | None:
        """Seconds to wait before restarting `name`, or None when its budget is spent."""
        history = self._restarts[name]
        while history and history[0] < now - self.window_s:
            history.popleft()
        if len(history) >= self.budget:
            self.gave_up.add(name)
            return None
        history.append(now)
        return min(self.base_s * 2 ** (len(history) - 1), self.max_s)

    def counts(self) -> dict[str, int]:
        return {name: len(times) for name, times in self._restarts.items()}


class Watchdog:
    def __init__(
        self, settings: Settings, rpc: Any, stdin: Any = sys.stdin, stdout: Any = sys.stdout
    ) -> None:
        self.settings = settings
        self.rpc = rpc
        self.stdin, self.stdout = stdin, stdout
        self.budget = RestartBudget(settings.restart_budget, settings.restart_window_s,
                                    settings.restart_backoff_s, settings.restart_backoff_max_s)
        self.restarts_total: dict[str, int] = defaultdict(int)
        self._notifier = Notifier(settings)

    def serve(self) -> None:
        while True:
            self.stdout.write("READY\n")
            self.stdout.flush()
            headers = dict(item.split(":", 1) for item in self.stdin.readline().split())
            payload = self.stdin.read(int(headers["len"]))
            try:
                self.handle(headers["eventname"], payload)
            except Exception:
                log.exception("watchdog failed to handle an event")
            self.stdout.write("RESULT 2\nOK")
            self.stdout.flush()

    def handle(self, event: str, payload: str) -> None:
        if event not in ("PROCESS_STATE_EXITED", "PROCESS_STATE_FATAL"):
            return
        fields = dict(item.split(":", 1) for item in payload.split("\n", 1)[0].split())
        group, name = fields["groupname"], fields["processname"]
        if fields.get("pid", "").isdigit():
            process_exited(int(fields["pid"]))
        instance = int(name.rsplit("_", 1)[1]) if name.rsplit("_", 1)[-1].isdigit() else 0
        self._notifier.exited(group, instance)
        full = f"{group}:{name}"
        delay = self.budget.next_delay(full, time.monotonic())
        if delay is None:
            log.error("restart budget exhausted: not restarting", extra={"program": full,
                      "budget": self.settings.restart_budget, "window_s": self.settings.restart_window_s})
            self._notifier.exited(group, instance, gave_up=True)
        else:
            log.warning("program died; restarting", extra={"program": full, "event": event,
                                                            "delay_s": delay})
            threading.Timer(delay, self._restart, args=(full,)).start()
        self._write_state()

    def _restart(self, full: str) -> None:
        try:
            self.rpc.supervisor.startProcess(full, False)
            self.restarts_total[full] += 1
        except Exception as exc:  # already running (ops restarted it), or supervisord stopping
            log.info("restart skipped", extra={"program": full, "reason": str(exc)[:200]})
        self._write_state()

    def _write_state(self) -> None:
        state = {"restarts_in_window": self.budget.counts(), "restarts_total": self.restarts_total,
                 "gave_up": sorted(self.budget.gave_up)}
        path = Path(os.environ.get("INZWA_RUN_DIR", ".")) / "watchdog.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(path)


class Notifier:
    """Tells the orchestrator that a worker process exited (best effort, never blocks long)."""

    def __init__(self, settings: Settings) -> None:
        self._context, self._socket = sync_push(settings, "watchdog", settings.watchdog,
                                                server="orchestrator")

    def exited(self, program: str, instance: int, gave_up: bool = False) -> None:
        kind = KIND_OF.get(program)
        if kind is None:
            return  # not a worker (the orchestrator and gateway restart on their own)
        frame = WorkerExited(kind=kind, program=program, instance=instance, gave_up=gave_up)
        try:
            self._socket.send(encode(frame))
        except Exception:  # the orchestrator is down: heartbeats will tell it later
            log.info("orchestrator not told of the exit", extra={"program": program})

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()


def main() -> None:
    from supervisor import childutils

    umask_private()
    settings = get_settings()
    logs.setup("watchdog", settings.log_level)
    Watchdog(settings, childutils.getRPCInterface(os.environ)).serve()


if __name__ == "__main__":
    main()
