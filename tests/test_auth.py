"""Authentication: API keys, HS256 JWTs, and the loopback-only mode without credentials."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from common.settings import Settings
from gateway.auth import (
    Authenticator,
    AuthError,
    Principal,
    auth_configured,
    bearer,
    check_bind,
    is_loopback,
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
    return Settings(_env_file=None, **fields)


def authenticator(**overrides: object) -> Authenticator:
    return Authenticator(make_settings(**overrides))


def refused(auth: Authenticator, token: str | None, host: str = REMOTE) -> AuthError:
    with pytest.raises(AuthError) as caught:
        auth.authenticate(token, host)
    return caught.value


def assert_secret_free(error: AuthError, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in error.message and secret not in str(error)


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
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) - 2}, SECRET, algorithm="HS256")
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
    for token in (none_alg_token(claims), jwt.encode(claims, None, algorithm="none")):
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
    exp = int(time.time()) + 60
    admin = jwt.encode({"sub": "ops", "exp": exp, "scopes": ["read", "admin"]}, SECRET, algorithm="HS256")
    user = jwt.encode({"sub": "ops", "exp": exp, "scopes": ["read"]}, SECRET, algorithm="HS256")
    assert auth.authenticate(admin, REMOTE).admin
    assert not auth.authenticate(user, REMOTE).admin


def test_jwt_without_sub_or_exp_is_refused() -> None:
    auth = authenticator(jwt_secret=SECRET)
    no_sub = jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    no_exp = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    empty_sub = jwt.encode({"sub": "", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    for token in (no_sub, no_exp, empty_sub):
        error = refused(auth, token)
        assert (error.status, error.code) == (401, "invalid_credentials")
        assert_secret_free(error, token, SECRET)


def test_unknown_key_without_jwt_secret_is_not_decoded() -> None:
    token = make_token(SECRET, "alice", 60)  # a valid JWT, but this gateway trusts keys only
    assert refused(authenticator(api_keys=[KEY]), token).code == "invalid_credentials"


# --- no credentials configured ---


def test_no_auth_loopback_is_anonymous_admin() -> None:
    auth = authenticator()
    assert not auth.configured and not auth_configured(make_settings())
    for host in ("127.0.0.1", "::1", "localhost"):
        principal = auth.authenticate(None, host)
        assert principal == Principal(id="ip:" + host, admin=True, anonymous=True)
        require_admin(principal)


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
    claims = jwt.decode(make_token(SECRET, "svc", 30, scope="admin"), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "svc" and claims["scope"] == "admin"
    assert 25 <= claims["exp"] - time.time() <= 31
    assert "scope" not in jwt.decode(make_token(SECRET, "svc", 30), SECRET, algorithms=["HS256"])
