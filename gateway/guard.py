"""Who is calling, and may they: auth and rate limits as FastAPI dependencies.

REST routes depend on `Guard.caller` (any valid credential) or `Guard.admin`; the WebSocket
calls `Guard.check` itself with the token from its `start` message or header. Refusals become
`ApiError`s (401/403 with a reason, 429 with Retry-After) and are counted.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from fastapi import Request

from common.metrics import AUTH_FAILURES, RATE_LIMITED
from common.settings import Settings
from gateway.auth import Authenticator, AuthError, Principal, bearer, ensure_local_admin_token, require_admin
from gateway.errors import ApiError
from gateway.limits import Limits, RateLimited, make_limits

log = logging.getLogger(__name__)


def auth_error(exc: AuthError) -> ApiError:
    AUTH_FAILURES.labels(exc.code).inc()
    headers = {"WWW-Authenticate": 'Bearer realm="inzwa"'} if exc.status == 401 else {}
    return ApiError(exc.status, exc.code, exc.message, headers)


def rate_error(exc: RateLimited) -> ApiError:
    RATE_LIMITED.labels(exc.limit).inc()
    return ApiError(429, "rate_limited", f"{exc.message} ({exc.limit})",
                    {"Retry-After": exc.retry_after_header})


def client_host(request: Request) -> str:
    return request.client.host if request.client else ""


class Guard:
    def __init__(self, settings: Settings, *, local_admin: bool = True) -> None:
        # The local admin token (a 0600 file in the run directory) is how a loopback operator
        # reaches admin routes: anonymous callers are not admins.
        token = ""
        if local_admin:
            try:
                token = ensure_local_admin_token(settings)
            except OSError as exc:  # a read-only run directory: admin only by credential then
                log.warning("no local admin token", extra={"error": type(exc).__name__})
        self.authenticator = Authenticator(settings, token)
        self.limits: Limits = make_limits(settings)

    async def check(self, token: str | None, host: str) -> Principal:
        """Authenticate one request and take one token from its caller's request bucket."""
        try:
            principal = self.authenticator.authenticate(token, host)
        except AuthError as exc:
            raise auth_error(exc) from None
        await self._limited(self.limits.hit(principal.id))
        return principal

    @staticmethod
    async def _limited(check: Awaitable[None]) -> None:
        """A limit check; a shared-limits store that is down refuses (503) rather than waving
        everyone through."""
        try:
            await check
        except RateLimited as exc:
            raise rate_error(exc) from None
        except Exception as exc:
            log.error("rate-limit store unavailable", extra={"error": type(exc).__name__})
            raise ApiError(503, "limits_unavailable", "the rate-limit store is unavailable",
                           {"Retry-After": "5"}) from None

    async def caller(self, request: Request) -> Principal:
        # The edge middleware (gateway/security.py) authenticated the request before its body
        # was read; only the rate limit is left to take.
        principal = request.scope.get("state", {}).get("inzwa_principal")
        if isinstance(principal, Principal):
            await self._limited(self.limits.hit(principal.id))
            return principal
        return await self.check(bearer(request.headers.get("authorization")), client_host(request))

    async def admin(self, request: Request) -> Principal:
        principal = await self.caller(request)
        try:
            require_admin(principal)
        except AuthError as exc:
            raise auth_error(exc) from None
        return principal

    async def charge_audio(self, principal: Principal, seconds: float) -> None:
        await self._limited(self.limits.charge_audio(principal.id, seconds))

    async def open_session(self, principal: Principal) -> None:
        await self._limited(self.limits.open_session(principal.id))

    async def close_session(self, principal: Principal) -> None:
        try:
            await self.limits.close_session(principal.id)
        except Exception as exc:  # the slot expires with its key's TTL in the shared store
            log.error("could not release a session slot", extra={"error": type(exc).__name__})
