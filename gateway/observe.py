"""Per-request observation for the gateway: a request id, one access log line, and metrics.

A pure ASGI middleware (not BaseHTTPMiddleware), so streamed bodies (SSE, audio) pass through
untouched and the duration covers the whole body. The request id comes from `X-Request-ID` when
the client sends a sane one, else a new one; it is echoed back and put on every log line the
request causes. The access line names the route template, never the query string or headers
(where credentials may be).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from common.logs import request_var
from common.metrics import HTTP_LATENCY_MS, HTTP_REQUESTS

log = logging.getLogger("gateway.access")

_SANE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
Scope = dict[str, Any]


def request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _SANE_ID.match(text):
                return text
    return uuid.uuid4().hex


class RequestObserver:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        token = request_var.set(request_id)
        state = {"status": "500" if scope["type"] == "http" else "1006"}

        async def observed_send(message: dict[str, Any]) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                state["status"] = str(message["status"])
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            elif kind == "websocket.accept":
                state["status"] = "101"
            elif kind == "websocket.close" and state["status"] != "101":
                state["status"] = str(message.get("code", 1000))
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, observed_send)
        finally:
            self._record(scope, state["status"], (time.perf_counter() - started) * 1000)
            request_var.reset(token)

    @staticmethod
    def _record(scope: Scope, status: str, elapsed_ms: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        method = scope.get("method", "WS")
        HTTP_REQUESTS.labels(route, method, status).inc()
        if scope["type"] == "http":
            HTTP_LATENCY_MS.labels(route).observe(elapsed_ms)
        client = scope.get("client") or ("", 0)
        log.info("request", extra={"route": route, "method": method, "status": status,
                                   "ms": round(elapsed_ms, 1), "client": client[0]})
