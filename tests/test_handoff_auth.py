"""Who may be an operator (handoff area): operator keys, JWT scope `operator`, admins, and the
anonymous loopback caller only while no credential is configured."""

from __future__ import annotations

from typing import Any

import pytest

from common.settings import Settings
from gateway.auth import Authenticator, AuthError, make_token
from gateway.operator import is_operator

SECRET = "s" * 48


def authenticator(**fields: Any) -> Authenticator:
    return Authenticator(Settings(_env_file=None, **fields))  # type: ignore[call-arg]


def test_operator_keys_and_scopes_make_operators_and_nothing_else_does() -> None:
    auth = authenticator(api_keys=["user-key"], admin_api_keys=["admin-key"],
                         operator_api_keys=["op-key"], jwt_secret=SECRET)
    operator = auth.authenticate("op-key", "10.0.0.1")
    assert operator.operator and not operator.admin and is_operator(operator)
    assert is_operator(auth.authenticate("admin-key", "10.0.0.1"))
    assert not is_operator(auth.authenticate("user-key", "127.0.0.1"))
    scoped = auth.authenticate(make_token(SECRET, "desk-7", 60, "operator"), "10.0.0.1")
    assert scoped.id == "jwt:desk-7" and scoped.operator and not scoped.admin
    assert not is_operator(auth.authenticate(make_token(SECRET, "caller", 60, "user"), "10.0.0.1"))
    with pytest.raises(AuthError):
        auth.authenticate("op-key-wrong", "10.0.0.1")


def test_operator_keys_alone_switch_authentication_on() -> None:
    auth = authenticator(operator_api_keys=["op-key"])
    assert auth.configured
    with pytest.raises(AuthError):
        auth.authenticate(None, "127.0.0.1")  # no anonymous operator once any credential is set
    assert is_operator(authenticator().authenticate(None, "127.0.0.1"))  # none configured: loopback is
