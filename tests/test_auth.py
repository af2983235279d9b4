"""Authentication: API keys, HS256 JWTs, and the loopback-only mode without credentials."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path

import jwt
import pytest

from common.settings import Settings
from gateway.auth import (
    ANONYMOUS_ID,
    Authenticator,
    AuthError,
    ConfigError,
    Principal,
    auth_configured,
    bearer,
    check_bind,
    ensure_local_admin_token,
    is_loopback,
    local_admin_token,
    make_token,
    require_admin,
)

KEY = "sk-user-5d1e0c3b9a7f4e21"
ADMIN_KEY = "sk-admin-8c2f7a9e1b3d4f60"
SECRET = "jwt-secret-" + "0123456789abcdef" * 4  # >= 64 bytes: no short-key warning, even for HS512
REMOTE = "203.0.113.7"


def make_settings(**overrides: object) -> Settings:
    # Every auth field is given so INZWA_* variables of the caller's shell cannot leak in.
    fields: dict[str, object] = {"host": "127.0.0.1", "api_keys": [], "admin_api_keys": [], "jwt_secret": ""}
    fields.update(overrides)
    return Settings(_env_file=None, **fields)  # type: ignore[arg-type, call-arg]


def authenticator(**overrides: object) -> Authenticator:
    return Authenticator(make_settings(**overrides))


def refused(auth: Authenticator, token: str | None, host: str = REMOTE) -> AuthError:
    with pytest.raises(AuthError) as caught:
        auth.authenticate(token, host)
    return caught.value


def assert_secret_free(error: AuthError, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in error.message and secret not in str(error)


def claims(**overrides: object) -> dict[str, object]:
    """Valid claims for this gateway's defaults; an override of None drops that claim."""
    now = int(time.time())
    base: dict[str, object] = {"sub": "alice", "iat": now, "exp": now + 60, "aud": "inzwa", "iss": "inzwa"}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def none_alg_token(claims: dict[str, object]) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


# --- API keys ---


def test_valid_api_key_gives_a_hashed_id() -> None:
    principal = authenticator(api_keys=[KEY]).authenticate(KEY, REMOTE)
    assert principal.id.startswith("key:") and len(principal.id) == len("key:") + 12
    assert KEY not in principal.id
    assert not principal.admin and not principal.anonymous


def test_two_keys_get_distinct_stable_ids() -> None:
    auth = authenticator(api_keys=[KEY, "sk-other-key-000000000"])
    first = auth.authenticate(KEY, REMOTE)
    assert first == auth.authenticate(KEY, "198.51.100.1")  # the id follows the key, not the address
    assert first.id != auth.authenticate("sk-other-key-000000000", REMOTE).id


def test_wrong_api_key_is_401_and_not_echoed() -> None:
    wrong = KEY + "x"
    error = refused(authenticator(api_keys=[KEY]), wrong)
    assert (error.status, error.code) == (401, "invalid_credentials")
    assert_secret_free(error, wrong, KEY)


def test_missing_token_is_401() -> None:
    for token in (None, ""):
        error = refused(authenticator(api_keys=[KEY]), token)
        assert (error.status, error.code) == (401, "missing_credentials")
        assert "Bearer" in error.message


def test_non_ascii_token_is_refused_cleanly() -> None:
    error = refused(authenticator(api_keys=[KEY]), "ключ-🙂")
    assert error.code == "invalid_credentials"


def test_admin_key_passes_require_admin_and_user_key_does_not() -> None:
    auth = authenticator(api_keys=[KEY], admin_api_keys=[ADMIN_KEY])
    admin = auth.authenticate(ADMIN_KEY, REMOTE)
    user = auth.authenticate(KEY, REMOTE)
    assert admin.admin and ADMIN_KEY not in admin.id
    require_admin(admin)
    with pytest.raises(AuthError) as caught:
        require_admin(user)
    assert (caught.value.status, caught.value.code) == (403, "admin_required")
    assert_secret_free(caught.value, KEY, ADMIN_KEY)


def test_key_in_both_lists_is_admin() -> None:
    assert authenticator(api_keys=[KEY], admin_api_keys=[KEY]).authenticate(KEY, REMOTE).admin


def test_only_admin_keys_configured_still_requires_credentials() -> None:
    error = refused(authenticator(admin_api_keys=[ADMIN_KEY]), None, "127.0.0.1")
    assert error.code == "missing_credentials"


# --- JWT ---


def test_valid_jwt() -> None:
    principal = authenticator(jwt_secret=SECRET).authenticate(make_token(SECRET, "alice", 60), REMOTE)
    assert principal == Principal(id="jwt:alice", admin=False, anonymous=False)


def test_jwt_and_api_keys_together() -> None:
    auth = authenticator(api_keys=[KEY], jwt_secret=SECRET)
    assert auth.authenticate(KEY, REMOTE).id.startswith("key:")
    assert auth.authenticate(make_token(SECRET, "bob", 60), REMOTE).id == "jwt:bob"


def test_expired_jwt() -> None:
    token = make_token(SECRET, "alice", -60)
    error = refused(authenticator(jwt_secret=SECRET), token)
    assert (error.status, error.code) == (401, "token_expired")
    assert_secret_free(error, token, SECRET)


def test_jwt_within_leeway_is_accepted() -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 2), SECRET, algorithm="HS256")
    assert authenticator(jwt_secret=SECRET).authenticate(token, REMOTE).id == "jwt:alice"


def test_jwt_with_wrong_secret() -> None:
    token = make_token("another-secret-0123456789abcdef0123456789", "alice", 60)
    error = refused(authenticator(jwt_secret=SECRET), token)
    assert (error.status, error.code) == (401, "invalid_credentials")
    assert_secret_free(error, token, SECRET)


def test_malformed_token_with_jwt_secret() -> None:
    error = refused(authenticator(jwt_secret=SECRET), "not.a.jwt")
    assert (error.status, error.code) == (401, "invalid_credentials")
    assert_secret_free(error, "not.a.jwt")


def test_alg_none_token_is_refused() -> None:
    claims = {"sub": "mallory", "exp": int(time.time()) + 60, "scope": "admin"}
    for token in (none_alg_token(claims), jwt.encode(claims, None, algorithm="none")):  # type: ignore[arg-type]
        error = refused(authenticator(jwt_secret=SECRET), token)
        assert (error.status, error.code) == (401, "invalid_credentials")


def test_other_hmac_algorithm_is_refused() -> None:
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS512")
    assert refused(authenticator(jwt_secret=SECRET), token).code == "invalid_credentials"


def test_admin_scope_string_claim() -> None:
    auth = authenticator(jwt_secret=SECRET)
    admin = auth.authenticate(make_token(SECRET, "ops", 60, scope="read admin"), REMOTE)
    assert admin.admin
    require_admin(admin)
    assert not auth.authenticate(make_token(SECRET, "ops", 60, scope="administrator read"), REMOTE).admin


def test_admin_scopes_list_claim() -> None:
    auth = authenticator(jwt_secret=SECRET)
    admin = jwt.encode(claims(sub="ops", scopes=["read", "admin"]), SECRET, algorithm="HS256")
    user = jwt.encode(claims(sub="ops", scopes=["read"]), SECRET, algorithm="HS256")
    assert auth.authenticate(admin, REMOTE).admin
    assert not auth.authenticate(user, REMOTE).admin


def test_jwt_without_sub_or_exp_is_refused() -> None:
    auth = authenticator(jwt_secret=SECRET)
    no_sub = jwt.encode(claims(sub=None), SECRET, algorithm="HS256")
    no_exp = jwt.encode(claims(exp=None), SECRET, algorithm="HS256")
    empty_sub = jwt.encode(claims(sub=""), SECRET, algorithm="HS256")
    for token in (no_sub, no_exp, empty_sub):
        error = refused(auth, token)
        assert (error.status, error.code) == (401, "invalid_credentials")
        assert_secret_free(error, token, SECRET)


def test_unknown_key_without_jwt_secret_is_not_decoded() -> None:
    token = make_token(SECRET, "alice", 60)  # a valid JWT, but this gateway trusts keys only
    assert refused(authenticator(api_keys=[KEY]), token).code == "invalid_credentials"


# --- no credentials configured ---


def test_no_auth_loopback_callers_are_one_anonymous_non_admin() -> None:
    auth = authenticator()
    assert not auth.configured and not auth_configured(make_settings())
    for host in ("127.0.0.1", "127.0.0.2", "127.9.8.7", "::1", "localhost"):
        principal = auth.authenticate(None, host)
        # One principal for every loopback address: rotating 127.x does not reset limits.
        assert principal == Principal(id=ANONYMOUS_ID, admin=False, anonymous=True)
        with pytest.raises(AuthError) as caught:
            require_admin(principal)
        assert caught.value.status == 403


def test_no_auth_remote_is_403() -> None:
    for host in (REMOTE, "testclient", "0.0.0.0", ""):
        error = refused(authenticator(), "anything", host)
        assert (error.status, error.code) == (403, "loopback_only")


def test_anonymous_principal_is_not_admin_by_itself() -> None:
    with pytest.raises(AuthError):
        require_admin(Principal(id="ip:127.0.0.1", anonymous=True))


def test_auth_configured() -> None:
    assert auth_configured(make_settings(api_keys=[KEY]))
    assert auth_configured(make_settings(admin_api_keys=[ADMIN_KEY]))
    assert auth_configured(make_settings(jwt_secret=SECRET))


def test_is_loopback() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("testclient", "0.0.0.0", "::", "10.0.0.1", REMOTE, "example.com", "", "::ffff:10.0.0.1"):
        assert not is_loopback(host), host


def test_check_bind() -> None:
    with pytest.raises(RuntimeError, match="refuses to start on another address"):
        check_bind(make_settings(host="0.0.0.0"))
    check_bind(make_settings(host="0.0.0.0", api_keys=[KEY]))
    check_bind(make_settings(host="0.0.0.0", jwt_secret=SECRET))
    check_bind(make_settings(host="127.0.0.1"))
    check_bind(make_settings(host="::1"))


def test_check_bind_message_names_host_and_fix() -> None:
    with pytest.raises(RuntimeError) as caught:
        check_bind(make_settings(host="192.0.2.1"))
    assert "192.0.2.1" in str(caught.value) and "INZWA_API_KEYS" in str(caught.value)


# --- helpers ---


def test_bearer_parsing() -> None:
    assert bearer("Bearer abc.def") == "abc.def"
    assert bearer("bearer abc") == "abc"
    assert bearer("BEARER   abc  ") == "abc"
    for value in (None, "", "Bearer", "Bearer ", "Basic dXNlcjpwdw==", "abc", "Bearer a b", "Token abc"):
        assert bearer(value) is None, value


def test_make_token_claims() -> None:
    def decode(token: str) -> dict[str, object]:
        return dict(jwt.decode(token, SECRET, algorithms=["HS256"], audience="inzwa", issuer="inzwa"))

    made = decode(make_token(SECRET, "svc", 30, scope="admin"))
    assert made["sub"] == "svc" and made["scope"] == "admin" and made["aud"] == made["iss"] == "inzwa"
    assert 25 <= float(str(made["exp"])) - time.time() <= 31
    assert "scope" not in decode(make_token(SECRET, "svc", 30))


# --- JWT hardening: secret length, audience, issuer, lifetime ---


def test_a_short_jwt_secret_refuses_to_start() -> None:
    for secret in ("x", "s" * 31):
        with pytest.raises(ConfigError, match="at least 32"):
            authenticator(jwt_secret=secret)
        with pytest.raises(RuntimeError, match="INZWA_JWT_SECRET"):
            check_bind(make_settings(jwt_secret=secret))
    authenticator(jwt_secret="s" * 32)  # exactly 32 bytes is enough


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"aud": "another-service"}, id="foreign-audience"),
        pytest.param({"iss": "someone-else"}, id="foreign-issuer"),
        pytest.param({"aud": None}, id="no-audience"),
        pytest.param({"iss": None}, id="no-issuer"),
        pytest.param({"iat": None}, id="no-iat"),
    ],
)
def test_jwt_audience_issuer_and_iat_are_required(bad: dict[str, object]) -> None:
    token = jwt.encode(claims(**bad), SECRET, algorithm="HS256")
    error = refused(authenticator(jwt_secret=SECRET), token)
    assert (error.status, error.code) == (401, "invalid_credentials")
    assert_secret_free(error, token, SECRET)


def test_jwt_audience_and_issuer_come_from_settings() -> None:
    auth = authenticator(jwt_secret=SECRET, jwt_audience="voice-api", jwt_issuer="https://id.example")
    good = make_token(SECRET, "alice", 60, audience="voice-api", issuer="https://id.example")
    assert auth.authenticate(good, REMOTE).id == "jwt:alice"
    assert refused(auth, make_token(SECRET, "alice", 60)).code == "invalid_credentials"


def test_jwt_lifetime_is_capped() -> None:
    auth = authenticator(jwt_secret=SECRET, jwt_max_ttl_s=3600)
    assert auth.authenticate(make_token(SECRET, "alice", 3600), REMOTE).id == "jwt:alice"
    error = refused(auth, make_token(SECRET, "alice", 3601 + 60))
    assert (error.status, error.code) == (401, "token_lifetime_too_long")
    now = int(time.time())
    ten_years = jwt.encode(claims(iat=now - 60, exp=now + 10 * 365 * 86400), SECRET, algorithm="HS256")
    assert refused(auth, ten_years).code == "token_lifetime_too_long"


def test_a_jwt_issued_in_the_future_is_refused() -> None:
    now = int(time.time())
    token = jwt.encode(claims(iat=now + 600, exp=now + 900), SECRET, algorithm="HS256")
    assert refused(authenticator(jwt_secret=SECRET), token).code == "invalid_credentials"


# --- the local admin token ---


def test_local_admin_token_file_is_private_random_and_reused(tmp_path: Path) -> None:
    settings = make_settings(run_dir=tmp_path / "run")
    token = ensure_local_admin_token(settings)
    path = tmp_path / "run" / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 32 and local_admin_token(settings) == token
    assert ensure_local_admin_token(settings) == token  # a second gateway on the run dir reads it
    other = make_settings(run_dir=tmp_path / "other")
    assert ensure_local_admin_token(other) != token


def test_a_world_readable_token_file_is_replaced(tmp_path: Path) -> None:
    settings = make_settings(run_dir=tmp_path)
    (tmp_path / "admin.token").write_text("x" * 40)
    os.chmod(tmp_path / "admin.token", 0o644)
    token = ensure_local_admin_token(settings)
    assert token != "x" * 40 and stat.S_IMODE((tmp_path / "admin.token").stat().st_mode) == 0o600


@pytest.mark.parametrize("configured", [{}, {"api_keys": [KEY]}], ids=["anonymous", "with-keys"])
def test_the_local_admin_token_is_an_admin(configured: dict[str, object]) -> None:
    auth = Authenticator(make_settings(**configured), "local-token-" + "9" * 32)
    principal = auth.authenticate("local-token-" + "9" * 32, "127.0.0.1")
    assert principal.admin and not principal.anonymous
    require_admin(principal)
    wrong = auth.authenticate("local-token-" + "8" * 32, "127.0.0.1") if not configured else None
    assert wrong is None or not wrong.admin  # anonymous mode: a wrong token is just anonymous


def test_a_gateway_without_a_writable_run_dir_starts_without_a_local_token(tmp_path: Path) -> None:
    from gateway.guard import Guard

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    guard = Guard(make_settings(run_dir=blocker / "run"))  # cannot create the token file
    assert guard.authenticator.authenticate(None, "127.0.0.1").id == ANONYMOUS_ID
    assert not guard.authenticator.authenticate("x" * 43, "127.0.0.1").admin
