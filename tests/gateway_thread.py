"""An extra real gateway in a background thread, wired to the shared stack's orchestrator.

`running_gateway(stack, **overrides)` runs `create_app(Settings(...))` under `uvicorn.Server` on
127.0.0.1 and a free port, in the stack's run directory (so it reaches the same orchestrator
over the same private ipc plane and hears its heartbeats) under a gateway_id of its own: the
orchestrator answers each gateway on the egress endpoint of its gateway_id
(run_dir/plane/egress-<gateway_id>.sock), so several gateways coexist. Tests use it to try
settings (credentials, small rate limits) without restarting the stack.

Starlette's TestClient is not used because its client host, "testclient", is not loopback.

Each gateway's bridge owns its ZeroMQ context (common.transport.Plane), so stopping one gateway
closes nothing of another's, or of anything else in the test process.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn

from common.settings import Settings
from gateway.app import create_app
from gateway.server import server_options
from tests.loopback import LOOPBACK
from tests.stack import Stack, free_port


class GatewayThread:
    """One gateway app served by uvicorn in a daemon thread; `start()`, then `stop()`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = settings.port
        # The production server options (gateway/server.py): body and message caps, proxy trust.
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_config=None,
            access_log=False, lifespan="on", timeout_graceful_shutdown=3, **server_options(settings),
        )
        self.server = uvicorn.Server(config)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, name=f"gateway-{self.port}", daemon=True)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/audio"

    def _serve(self) -> None:
        try:
            self.server.run()  # its own event loop; no signal handlers outside the main thread
        except BaseException as exc:  # uvicorn exits with SystemExit when it cannot bind
            self.error = exc

    def start(self, timeout_s: float = 60.0) -> None:
        """Serve, and wait until `/readyz` says the orchestrator and every worker kind are there."""
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.thread.is_alive():
                raise RuntimeError(f"the gateway thread on port {self.port} ended early: {self.error!r}")
            try:
                response = LOOPBACK.get(f"{self.http}/readyz", timeout=2)
            except httpx.HTTPError as exc:
                last = repr(exc)
            else:
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text}"
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the gateway on port {self.port} not ready after {timeout_s} s: {last}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """Ask uvicorn to exit, force it if it lingers, and join the thread (bounded)."""
        self.server.should_exit = True
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(5.0)
        if self.thread.is_alive():
            raise RuntimeError(f"the gateway thread on port {self.port} did not stop")


def gateway_settings(stack: Stack, **overrides: Any) -> Settings:
    """Settings for an extra gateway on the stack: loopback, free ports, no `.env`."""
    port = free_port()
    fields: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "run_dir": stack.run_dir,
        "gateway_id": f"gw-test-{port}",  # its egress: run_dir/plane/egress-gw-test-<port>.sock
        "zmq_base_port": int(stack.env["INZWA_ZMQ_BASE_PORT"]),
        "api_keys": [],
        "admin_api_keys": [],
        "jwt_secret": "",
        "redis_url": "",
    }
    fields.update(overrides)
    return Settings(_env_file=None, **fields)


@contextlib.contextmanager
def running_gateway(stack: Stack, **overrides: Any) -> Iterator[GatewayThread]:
    """A ready gateway thread on the shared stack with `overrides` of its settings; stopped on exit."""
    gateway = GatewayThread(gateway_settings(stack, **overrides))
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()
