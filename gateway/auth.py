"""Who is calling: API keys, HS256 JWTs, or an anonymous local developer.

The gateway is safe by default: with no credentials configured it serves only loopback
clients (and refuses to bind anything else, see `check_bind`), so a forgotten setting can
never expose an open voice assistant on a network. Once any key or JWT secret is set every
request needs a credential. Principals carry an id derived from the credential but never the
credential itself, since ids end up in logs, metrics and rate-limit keys.

Anonymous loopback callers are one principal, `anonymous-local`, and never admins: every
127.x address (or forged forwarding header) is the same caller for rate limits, and a web page
that reaches the loopback port cannot run admin actions. Local operators use the admin token
the gateway writes to `{run_dir}/admin.token` (0600) at start (`local_admin_token`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from common.settings import Settings

JWT_ALGORITHM = "HS256"
JWT_LEEWAY_S = 5.0  # tolerated clock skew between the token issuer and this gateway
JWT_MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash output
ANONYMOUS_ID = "anonymous-local"
LOCAL_ADMIN_ID = "local-admin"
ADMIN_TOKEN_FILE = "admin.token"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller; `id` keys rate limits and appears in logs."""

    id: str
    admin: bool = False
    anonymous: bool = False
    operator: bool = False  # may take handoffs (WS /v1/operator): INZWA_OPERATOR_API_KEYS, JWT scope operator


class AuthError(Exception):
    """A refused request: `status` is 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def auth_configured(settings: Settings) -> bool:
    """True when any credential is set, which switches the gateway to authenticated mode."""
    return bool(settings.api_keys or settings.admin_api_keys or settings.operator_api_keys
                or settings.jwt_secret)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (also IPv4-mapped) and "localhost"; anything unparsable is not.

    Starlette's test client reports the host "testclient": it is deliberately not loopback so
    tests exercise the remote-client rules.
    """
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])  # drop an IPv6 zone ("::1%lo")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class ConfigError(RuntimeError):
    """A setting the gateway refuses to start with; the message says which and how to fix it."""


def check_jwt_secret(settings: Settings) -> None:
    """A short HS256 secret can be brute-forced offline from one token: refuse to start."""
    size = len(settings.jwt_secret.encode())
    if settings.jwt_secret and size < JWT_MIN_SECRET_BYTES:
        raise ConfigError(
            f"INZWA_JWT_SECRET is {size} bytes; HS256 needs at least {JWT_MIN_SECRET_BYTES} random "
            f"bytes (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
        )


def check_bind(settings: Settings) -> None:
    """Refuse to listen beyond loopback while no credential is configured; refuse weak secrets."""
    check_jwt_secret(settings)
    if auth_configured(settings) or is_loopback(settings.host):
        return
    raise RuntimeError(
        f"no credentials configured (INZWA_API_KEYS, INZWA_ADMIN_API_KEYS or INZWA_JWT_SECRET), so the "
        f"gateway serves loopback only and refuses to start on another address ({settings.host!r}); "
        f"set a credential or bind 127.0.0.1"
    )


def key_id(key: str) -> str:
    """A stable, non-reversible id for an API key (a short prefix of its SHA-256)."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def bearer(header_value: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None for anything else."""
    if not header_value:
        return None
    parts = header_value.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1]


def require_admin(principal: Principal) -> None:
    """Raise unless the principal may use admin endpoints.

    The anonymous loopback principal is made admin by `Authenticator` only when no credential
    is configured, so a local developer without keys can still reach admin endpoints.
    """
    if not principal.admin:
        raise AuthError(403, "admin_required",
                        "this endpoint requires an admin key or a token with scope admin")


def make_token(secret: str, sub: str, ttl_s: float, scope: str = "", *, audience: str = "inzwa",
               issuer: str = "inzwa") -> str:
    """An HS256 token for `sub` valid `ttl_s` seconds (negative: already expired); for tests and ops.

    `audience` and `issuer` default to the settings' defaults (INZWA_JWT_AUDIENCE, INZWA_JWT_ISSUER).
    """
    now = time.time()
    claims: dict[str, Any] = {"sub": sub, "iat": int(now), "exp": int(now + ttl_s),
                              "aud": audience, "iss": issuer}
    if scope:
        claims["scope"] = scope
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def admin_token_path(settings: Settings) -> Path:
    return Path(settings.run_dir) / ADMIN_TOKEN_FILE


def local_admin_token(settings: Settings) -> str:
    """The local admin token a gateway with this run directory wrote (for the CLI and tests)."""
    return admin_token_path(settings).read_text().strip()


def ensure_local_admin_token(settings: Settings) -> str:
    """Create `{run_dir}/admin.token` (0600, random) unless present, and return the token.

    Gateways sharing a run directory share the token: the first creates it (O_EXCL, so two
    starting together cannot both write), the others read it. A file readable by others is
    not trusted and is replaced.
    """
    path = admin_token_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists() and path.stat().st_mode & 0o077:
        path.unlink()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if len(token) >= 32:
            return token
        path.unlink(missing_ok=True)  # empty or truncated (a crash mid-write): write anew
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token


def _digest(value: str) -> bytes:
    # Comparing fixed-length digests keeps compare_digest from leaking the key length, and
    # accepts any text (compare_digest refuses non-ASCII str).
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def _has_admin_scope(claims: dict[str, Any], name: str = "admin") -> bool:
    scope = claims.get("scope")
    scopes = claims.get("scopes")
    in_scope = isinstance(scope, str) and name in scope.split()
    in_scopes = isinstance(scopes, list) and name in scopes
    return in_scope or in_scopes


class Authenticator:
    """Turns a bearer token and the client address into a `Principal`, or raises `AuthError`."""

    def __init__(self, settings: Settings, local_token: str = "") -> None:
        check_jwt_secret(settings)
        self._configured = auth_configured(settings)
        self._keys = [(_digest(key), key_id(key), False) for key in settings.api_keys if key]
        self._keys += [(_digest(key), key_id(key), True) for key in settings.admin_api_keys if key]
        self._operator_keys = [(_digest(key), key_id(key)) for key in settings.operator_api_keys if key]
        self._local = _digest(local_token) if local_token else None
        self._jwt_secret = settings.jwt_secret
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._max_ttl_s = settings.jwt_max_ttl_s

    @property
    def configured(self) -> bool:
        return self._configured

    def authenticate(self, token: str | None, client_host: str) -> Principal:
        if token and self._is_local_admin(token):
            return Principal(id=LOCAL_ADMIN_ID, admin=True)
        if not self._configured:
            return self._anonymous(client_host)
        if not token:
            raise AuthError(401, "missing_credentials",
                            "missing credentials: send 'Authorization: Bearer <key>'")
        principal = self._match_key(token) or self._match_operator_key(token)
        if principal is not None:
            return principal
        if self._jwt_secret:
            return self._decode_jwt(token)
        raise AuthError(401, "invalid_credentials", "invalid credentials: the API key is not recognised")

    def _is_local_admin(self, token: str) -> bool:
        return self._local is not None and hmac.compare_digest(_digest(token), self._local)

    @staticmethod
    def _anonymous(client_host: str) -> Principal:
        # One principal for every loopback address: 127.0.0.2, 127.0.0.3, ... are the same
        # machine, so they share one set of rate limits.
        if is_loopback(client_host):
            return Principal(id=ANONYMOUS_ID, admin=False, anonymous=True)
        raise AuthError(403, "loopback_only",
                        "no credentials are configured on this gateway, so it serves loopback clients only")

    def _match_key(self, token: str) -> Principal | None:
        presented = _digest(token)
        found: Principal | None = None
        # Every key is compared, matched or not, so timing says nothing about which one matched;
        # an admin match wins when a key is listed in both settings.
        for digest, ident, admin in self._keys:
            if hmac.compare_digest(presented, digest) and (found is None or admin):
                found = Principal(id=ident, admin=admin)
        return found

    def _match_operator_key(self, token: str) -> Principal | None:
        """An operator key (handoff area): every one compared, as in `_match_key`."""
        presented = _digest(token)
        found = [ident for digest, ident in self._operator_keys if hmac.compare_digest(presented, digest)]
        return Principal(id=found[0], operator=True) if found else None

    def _decode_jwt(self, token: str) -> Principal:
        claims = self._verified_claims(token)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthError(401, "invalid_credentials",
                            "invalid credentials: the token's 'sub' claim is empty")
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int | float) or not isinstance(exp, int | float):
            raise AuthError(401, "invalid_credentials", "invalid credentials: bad 'iat' or 'exp'")
        if exp - iat > self._max_ttl_s:
            # A long-lived token is a stolen token's long life: issuers must mint short ones.
            raise AuthError(401, "token_lifetime_too_long",
                            f"the token's lifetime (exp - iat) is over {self._max_ttl_s:g} s")
        return Principal(id="jwt:" + sub, admin=_has_admin_scope(claims),
                         operator=_has_admin_scope(claims, "operator"))

    def _verified_claims(self, token: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._jwt_secret, algorithms=[JWT_ALGORITHM], audience=self._audience,
                issuer=self._issuer, options={"require": ["exp", "iat", "sub", "aud", "iss"]},
                leeway=JWT_LEEWAY_S)
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "token_expired", "the token has expired: obtain a new one") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(401, "invalid_credentials",
                            f"invalid credentials: the token lacks the {exc.claim!r} claim") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            raise AuthError(401, "invalid_credentials",
                            "invalid credentials: the token is for another audience or issuer") from None
        except jwt.InvalidTokenError:
            # The library's own message is dropped: it is not needed and must not echo the token.
            raise AuthError(401, "invalid_credentials",
                            "invalid credentials: not a known API key nor a valid HS256 token") from None
        return claims
