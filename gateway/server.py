"""uvicorn options for the gateway: one place for `python -m gateway` and the test gateways.

The defaults of uvicorn suit a trusted network, not an exposed voice assistant: 16 MiB WebSocket
messages with per-message deflate (a compression bomb), `X-Forwarded-For` trusted from
127.0.0.1 (any local process picks its own client address), no limit on connections, and no
deadline for a request's headers (slowloris). Each is tightened here from settings.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from common.settings import Settings


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """HTTP/1.1 that closes a connection whose request headers do not arrive in time.

    uvicorn times out idle keep-alive connections only after a first response; a client that
    connects and trickles its headers would otherwise hold a connection (and a
    `limit_concurrency` slot) forever.
    """

    header_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # the next request on a keep-alive connection
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def protocol_for(settings: Settings) -> type[HeaderTimeoutProtocol]:
    """The HTTP protocol class with this gateway's header timeout (a subclass per value)."""
    return type("GatewayHttpProtocol", (HeaderTimeoutProtocol,),
                {"header_timeout_s": settings.header_timeout_s})


def server_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config` / `uvicorn.run` (everything but app, host, port)."""
    options: dict[str, Any] = {
        "http": protocol_for(settings),
        "ws_per_message_deflate": False,  # no compression bombs: a message costs what it weighs
        "ws_max_size": settings.ws_max_bytes,  # ceiling for every route; routes may bound lower
        "ws_max_queue": 16,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "limit_concurrency": settings.limit_concurrency,
        "h11_max_incomplete_event_size": 16 * 1024,
        "server_header": False,
        # Forwarding headers rewrite the client address that limits and the loopback rule key
        # on: trusted only from the configured proxies, never by default.
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": list(settings.trusted_proxies),
    }
    if settings.tls_certfile or settings.tls_keyfile:
        options["ssl_certfile"] = settings.tls_certfile
        options["ssl_keyfile"] = settings.tls_keyfile
    return options


def check_tls(settings: Settings) -> None:
    """Both TLS files or neither; a half-configured TLS would silently serve plain HTTP."""
    if bool(settings.tls_certfile) != bool(settings.tls_keyfile):
        raise RuntimeError("set both INZWA_TLS_CERTFILE and INZWA_TLS_KEYFILE (or neither)")


def config(app: Any, settings: Settings, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, **{**server_options(settings), **overrides})
