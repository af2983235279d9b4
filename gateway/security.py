"""The gateway's edge: checks that run on the request line and headers, before any body is read.

One pure ASGI middleware (`EdgeGuard`) in front of every route:

- a trusted-`Host` check (DNS rebinding: a page on `evil.example` that resolves to 127.0.0.1
  must not reach the loopback gateway), on in anonymous mode and whenever INZWA_TRUSTED_HOSTS
  is set;
- in anonymous mode, a cross-site `Origin` (or `Sec-Fetch-Site: cross-site`) on a WebSocket or
  a state-changing request is refused: browsers send both headers and pages cannot forge them;
- authentication from the `Authorization` header before the body (an unauthenticated 200 MB
  POST costs nothing); the principal is handed to the routes in `scope["state"]`;
- a JSON body cap: Content-Length over `max_json_bytes` is refused at once, a chunked body is
  counted as it arrives and refused when it passes the cap; JSON nested deeper than 32 levels
  is refused too (parsers recurse per level). Upload routes stream their own (larger, capped)
  bodies themselves.

WebSocket refusals are sent before `accept`, which uvicorn answers with HTTP 403.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from common.metrics import AUTH_FAILURES
from common.settings import Settings
from gateway.auth import AuthError, bearer
from gateway.guard import Guard
from gateway.responses import OrjsonResponse

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]

# Routes any client may call without a credential (probes, API docs, the browser page, which
# asks its user for a key itself).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
                        "/", "/client-config", "/favicon.ico",
                        "/api/v1/health"})  # the job API's alias of /healthz (gateway/turns_api.py)
OPEN_PREFIXES = ("/static/",)
# Routes that stream and cap a larger body themselves (audio uploads, see gateway/uploads.py).
UPLOAD_PATHS: set[str] = {"/v1/asr", "/v1/audio/transcriptions"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PRINCIPAL_KEY = "inzwa_principal"


MAX_JSON_DEPTH = 32  # arrays/objects inside each other; our requests need 4


def json_too_deep(text: str | bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when JSON nests arrays/objects deeper than `limit` (brackets in strings do not count).

    Parsers recurse per level: Python's json and msgspec raise RecursionError on a few thousand
    levels, which a 4 KiB control message or a 64 KiB body can hold. Checking first turns that
    into a clean "invalid message" instead of an unexpected exception. Linear, and skipped
    outright when there are not even `limit` opening brackets.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def check_control_depth(text: str) -> None:
    """For `gateway.protocol.parse_client_message`: a control message nested too deeply is a
    `bad_message` (valid JSON, not a control message), not a crash in the decoder."""
    from gateway.protocol import ProtocolError

    if json_too_deep(text):
        raise ProtocolError("bad_message", f"control message nests deeper than {MAX_JSON_DEPTH} levels")


def register_upload_path(path: str) -> None:
    """A route that reads (and caps) its own body, e.g. an audio upload: exempt from the JSON cap."""
    UPLOAD_PATHS.add(path)


def host_name(value: str) -> str:
    """The host of a `Host` header or an origin's netloc, lower-case, without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:  # host:port (a bare IPv6 address has several colons)
        return value.split(":", 1)[0]
    return value


def trusted_hosts(settings: Settings) -> frozenset[str]:
    names = {*LOOPBACK_HOSTS, *(host_name(h) for h in settings.trusted_hosts)}
    if settings.host not in ("0.0.0.0", "::", ""):
        names.add(host_name(settings.host))
    return frozenset(names)


def origin_host(origin: str) -> str | None:
    """The host of an `Origin` header, or None for "null" and anything unparsable."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.hostname.lower()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class EdgeGuard:
    """See the module docstring; `guard` authenticates, `settings` gives the caps and host lists."""

    def __init__(self, app: Any, settings: Settings, guard: Guard) -> None:
        self.app = app
        self.guard = guard
        self.anonymous = not guard.authenticator.configured
        self.check_host = self.anonymous or bool(settings.trusted_hosts)
        self.hosts = trusted_hosts(settings)
        self.origins = frozenset(o.rstrip("/").lower() for o in settings.cors_allowed_origins)
        self.max_json = settings.max_json_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await self._refuse(scope, receive, send, *refusal)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        await self._http(scope, receive, send)

    def _refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        """(status, code, message) when the request line and headers alone already refuse it."""
        host = host_name(_header(scope, b"host") or "")
        if self.check_host and host not in self.hosts:
            return 421, "untrusted_host", "this gateway does not serve that Host name"
        if self.anonymous and self._cross_site(scope):
            return 403, "cross_origin", ("cross-site requests are refused while no credentials are "
                                         "configured (set INZWA_CORS_ALLOWED_ORIGINS or a credential)")
        return None

    def _cross_site(self, scope: Scope) -> bool:
        if scope["type"] == "http" and scope.get("method", "GET") in SAFE_METHODS:
            return False
        origin = _header(scope, b"origin")
        if origin is not None and origin.rstrip("/").lower() in self.origins:
            return False  # a page the operator allowed (INZWA_CORS_ALLOWED_ORIGINS)
        if (_header(scope, b"sec-fetch-site") or "").lower() == "cross-site":
            return True
        if origin is None:
            return False  # not a browser (browsers always send Origin on WebSockets and POSTs)
        return origin_host(origin) not in self.hosts

    async def _http(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope["path"]
        if path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            client = scope.get("client") or ("", 0)
            try:
                principal = self.guard.authenticator.authenticate(
                    bearer(_header(scope, b"authorization")), client[0])
            except AuthError as exc:
                AUTH_FAILURES.labels(exc.code).inc()
                headers = {"WWW-Authenticate": 'Bearer realm="inzwa"'} if exc.status == 401 else {}
                await _respond(scope, receive, send, exc.status, exc.code, exc.message, headers)
                return
            scope.setdefault("state", {})[PRINCIPAL_KEY] = principal
        if scope["path"] in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        body = await self._capped_body(scope, receive, send)
        if body is None:
            return
        if json_too_deep(body):
            await _respond(scope, receive, send, 422, "invalid_request",
                           f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels", {})
            return
        await self.app(scope, _replay(body, receive), send)

    async def _capped_body(self, scope: Scope, receive: Any, send: Any) -> bytes | None:
        """The whole body when within the cap; else a 413 is sent and None returned."""
        declared = _header(scope, b"content-length") or ""
        if declared.isdigit() and int(declared) > self.max_json:
            await self._too_large(scope, receive, send, f"the body is {declared} bytes")
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)  # the client left: the app sees the disconnect itself
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_json:
                await self._too_large(scope, receive, send, "the body passed the limit")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, scope: Scope, receive: Any, send: Any, what: str) -> None:
        await _respond(scope, receive, send, 413, "body_too_large",
                       f"{what}; JSON bodies are limited to {self.max_json} bytes",
                       {"Connection": "close"})

    async def _refuse(self, scope: Scope, receive: Any, send: Any, status: int, code: str,
                      message: str) -> None:
        AUTH_FAILURES.labels(code).inc()
        log.info("refused at the edge", extra={"code": code, "path": scope.get("path", "")})
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": code})  # before accept: 403
            return
        await _respond(scope, receive, send, status, code, message, {})


async def _respond(scope: Scope, receive: Any, send: Any, status: int, code: str, message: str,
                   headers: dict[str, str]) -> None:
    response = OrjsonResponse({"error": code, "message": message}, status_code=status, headers=headers)
    await response(scope, receive, send)


def _replay(body: bytes, receive: Any) -> Any:
    """A `receive` that gives the buffered body once, then the client's own messages (disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        message: Message = await receive()
        return message

    return replayed
