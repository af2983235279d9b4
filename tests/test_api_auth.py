"""Auth, rate limits and secret-free logs, end to end: real gateways on a real stack.

Each configuration runs as an extra gateway thread (`tests/gateway_thread.py`) wired to the
orchestrator of the shared fake-engine stack (what is under test is the gateway's refusals and
limits, which no engine takes part in); bind safety and logging run `python -m gateway` as a
real process.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import wave
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from gateway.auth import make_token
from tests.gateway_thread import GatewayThread, running_gateway
from tests.loopback import LOOPBACK
from tests.stack import ROOT, Stack, free_port, free_port_range

pytestmark = pytest.mark.e2e

KEY = "sk-e2e-user-4b7d19c2e05a"
ADMIN_KEY = "sk-e2e-admin-93fa0d6e7c18"
SECRET = "e2e-jwt-secret-" + "f00dfacecafe0123" * 4
WRONG_KEY = "sk-e2e-wrong-6a2c8e0b57d4"
AUTH = {"api_keys": [KEY], "admin_api_keys": [ADMIN_KEY], "jwt_secret": SECRET}

RPM_KEYS = ("sk-e2e-rpm-a-1c5e", "sk-e2e-rpm-b-7f3a", "sk-e2e-rpm-c-20d9")
SILENT_FRAME = bytes(640)  # 20 ms of PCM16 silence at 16 kHz
WS_TIMEOUT_S = 10.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def jwt_for(sub: str = "alice", ttl_s: float = 3600.0, scope: str = "") -> str:
    return make_token(SECRET, sub, ttl_s, scope)


def retry_after(response: httpx.Response) -> int:
    value = response.headers.get("Retry-After", "")
    assert value.isdigit() and int(value) > 0, response.headers
    return int(value)


@pytest.fixture(scope="module")
def gateway(fake_stack: Stack) -> Iterator[GatewayThread]:
    with running_gateway(fake_stack, **AUTH) as running:
        yield running


@pytest.fixture(scope="module")
def rpm_gateway(fake_stack: Stack) -> Iterator[GatewayThread]:
    with running_gateway(fake_stack, api_keys=list(RPM_KEYS), rate_requests_per_minute=60) as running:
        yield running


# --- WebSocket helpers ---------------------------------------------------------------------------


def start_message(token: str | None = None) -> str:
    message: dict[str, Any] = {"type": "start", "codec": "pcm16", "sample_rate": 16000}
    if token is not None:
        message["auth_token"] = token
    return json.dumps(message)


async def next_event(ws: websockets.ClientConnection) -> dict[str, Any]:
    """The next JSON event (binary audio skipped)."""
    while True:
        message = await asyncio.wait_for(ws.recv(), WS_TIMEOUT_S)
        if isinstance(message, str):
            return json.loads(message)


async def until_closed(ws: websockets.ClientConnection) -> list[dict[str, Any]]:
    """Every JSON event until the server closes the socket (bounded)."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + WS_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            message = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
            if isinstance(message, str):
                events.append(json.loads(message))
    except (websockets.ConnectionClosed, TimeoutError):
        pass
    return events


async def handshake(url: str, token: str | None = None,
                    headers: dict[str, str] | None = None) -> tuple[dict[str, Any], int | None]:
    """Send `start`; the first event and, when refused, the close code (None while open)."""
    async with websockets.connect(url, additional_headers=headers, open_timeout=WS_TIMEOUT_S,
                                  close_timeout=5) as ws:
        await ws.send(start_message(token))
        event = await next_event(ws)
        if event.get("type") == "error":
            await until_closed(ws)
        return event, ws.close_code


def ws_handshake(url: str, token: str | None = None,
                 headers: dict[str, str] | None = None) -> tuple[dict[str, Any], int | None]:
    return asyncio.run(handshake(url, token, headers))


# --- REST auth -----------------------------------------------------------------------------------


def test_healthz_needs_no_credentials(gateway: GatewayThread) -> None:
    response = LOOPBACK.get(f"{gateway.http}/healthz", timeout=10)
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_missing_credentials_are_refused_with_401(gateway: GatewayThread) -> None:
    response = LOOPBACK.get(f"{gateway.http}/v1/models", timeout=10)
    assert response.status_code == 401
    assert response.json()["error"] == "missing_credentials"
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")


@pytest.mark.parametrize(
    ("token", "code"),
    [
        pytest.param(WRONG_KEY, "invalid_credentials", id="wrong-key"),
        pytest.param(jwt_for(ttl_s=-60), "token_expired", id="expired-jwt"),
        pytest.param(make_token("another-secret-" + "0" * 48, "alice", 300), "invalid_credentials",
                     id="foreign-jwt"),
    ],
)
def test_bad_credentials_are_refused_with_401(gateway: GatewayThread, token: str, code: str) -> None:
    response = LOOPBACK.get(f"{gateway.http}/v1/models", headers=bearer(token), timeout=10)
    assert response.status_code == 401
    assert response.json()["error"] == code
    assert "WWW-Authenticate" in response.headers


@pytest.mark.parametrize("token", [KEY, ADMIN_KEY, jwt_for()], ids=["key", "admin-key", "jwt"])
def test_valid_credentials_list_the_models(gateway: GatewayThread, token: str) -> None:
    response = LOOPBACK.get(f"{gateway.http}/v1/models", headers=bearer(token), timeout=60)
    assert response.status_code == 200, response.text
    roles = {model["role"] for model in response.json()["models"]}
    assert {"asr", "llm", "tts"} <= roles


@pytest.mark.parametrize("token", [KEY, jwt_for()], ids=["key", "jwt-without-admin-scope"])
def test_warmup_needs_an_admin_credential(gateway: GatewayThread, token: str) -> None:
    response = LOOPBACK.post(f"{gateway.http}/v1/admin/warmup", headers=bearer(token), timeout=60)
    assert response.status_code == 403
    assert response.json()["error"] == "admin_required"


@pytest.mark.parametrize("token", [ADMIN_KEY, jwt_for(scope="admin")], ids=["admin-key", "admin-jwt"])
def test_warmup_with_an_admin_credential(gateway: GatewayThread, token: str) -> None:
    response = LOOPBACK.post(f"{gateway.http}/v1/admin/warmup", headers=bearer(token), timeout=90)
    assert response.status_code == 200, response.text
    assert response.json()["missing"] == []


def test_metrics_need_an_admin_credential(gateway: GatewayThread) -> None:
    assert LOOPBACK.get(f"{gateway.http}/metrics", timeout=10).status_code == 401
    refused = LOOPBACK.get(f"{gateway.http}/metrics", headers=bearer(KEY), timeout=10)
    assert refused.status_code == 403 and refused.json()["error"] == "admin_required"
    allowed = LOOPBACK.get(f"{gateway.http}/metrics", headers=bearer(ADMIN_KEY), timeout=10)
    assert allowed.status_code == 200
    assert "inzwa_http_requests_total" in allowed.text


# --- WebSocket auth ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "code"),
    [
        pytest.param(None, "missing_credentials", id="no-token"),
        pytest.param(WRONG_KEY, "invalid_credentials", id="wrong-key"),
        pytest.param(jwt_for(ttl_s=-60), "token_expired", id="expired-jwt"),
    ],
)
def test_ws_refuses_bad_credentials_with_1008(gateway: GatewayThread, token: str | None,
                                              code: str) -> None:
    event, close_code = ws_handshake(gateway.url, token)
    assert event["type"] == "error" and event["code"] == code, event
    assert close_code == 1008


def test_ws_refuses_a_wrong_bearer_header_with_1008(gateway: GatewayThread) -> None:
    event, close_code = ws_handshake(gateway.url, headers=bearer(WRONG_KEY))
    assert event["type"] == "error" and event["code"] == "invalid_credentials", event
    assert close_code == 1008


@pytest.mark.parametrize("token", [KEY, jwt_for(), jwt_for(scope="admin")],
                         ids=["key", "jwt", "admin-jwt"])
def test_ws_starts_with_a_valid_auth_token(gateway: GatewayThread, token: str) -> None:
    event, close_code = ws_handshake(gateway.url, token)
    assert event["type"] == "session.started", event
    uuid.UUID(event["session_id"])
    assert close_code is None


def test_ws_starts_with_a_bearer_header(gateway: GatewayThread) -> None:
    event, close_code = ws_handshake(gateway.url, headers=bearer(KEY))
    assert event["type"] == "session.started", event
    assert close_code is None


# --- rate limits ---------------------------------------------------------------------------------


def hit_until_limited(client: httpx.Client, base: str, key: str, attempts: int = 200) -> httpx.Response:
    """Cheap authenticated requests (an unknown session: 404, no orchestrator round trip) until a 429."""
    for _ in range(attempts):
        response = client.get(f"{base}/v1/sessions/{uuid.uuid4()}", headers=bearer(key))
        if response.status_code == 429:
            return response
        assert response.status_code == 404, response.text
    pytest.fail(f"no 429 after {attempts} requests at 60 per minute")


def test_requests_per_minute_limit_and_its_reset(rpm_gateway: GatewayThread) -> None:
    with httpx.Client(timeout=10) as client:
        limited = hit_until_limited(client, rpm_gateway.http, RPM_KEYS[0])
        assert limited.json()["error"] == "rate_limited"
        wait_s = retry_after(limited)
        assert wait_s <= 60
        time.sleep(wait_s)
        after = client.get(f"{rpm_gateway.http}/v1/sessions/{uuid.uuid4()}", headers=bearer(RPM_KEYS[0]))
        assert after.status_code == 404, after.text


def test_limits_are_per_caller(rpm_gateway: GatewayThread) -> None:
    with httpx.Client(timeout=10) as client:
        limited = hit_until_limited(client, rpm_gateway.http, RPM_KEYS[1])
        assert limited.json()["error"] == "rate_limited"
        other = client.get(f"{rpm_gateway.http}/v1/sessions/{uuid.uuid4()}", headers=bearer(RPM_KEYS[2]))
        assert other.status_code == 404, other.text


def test_concurrent_sessions_limit(fake_stack: Stack) -> None:
    async def scenario(url: str) -> None:
        async with websockets.connect(url, open_timeout=WS_TIMEOUT_S, close_timeout=5) as first:
            await first.send(start_message(KEY))
            assert (await next_event(first))["type"] == "session.started"
            event, close_code = await handshake(url, KEY)
            assert event["type"] == "error" and event["code"] == "rate_limited", event
            assert isinstance(event.get("retry_after_s"), int) and event["retry_after_s"] > 0
            assert close_code == 1013
        # The slot is released once the server has seen the first session end: poll briefly.
        deadline = time.monotonic() + 5
        while True:
            event, close_code = await handshake(url, KEY)
            if event["type"] == "session.started" or time.monotonic() > deadline:
                break
            assert event.get("code") == "rate_limited", event
            await asyncio.sleep(0.2)
        assert event["type"] == "session.started", event
        assert close_code is None

    with running_gateway(fake_stack, **AUTH, rate_concurrent_sessions=1) as gateway:
        asyncio.run(scenario(gateway.url))


def silent_wav(seconds: float, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(bytes(int(seconds * rate) * 2))
    return buffer.getvalue()


def test_audio_seconds_per_day_quota(fake_stack: Stack) -> None:
    async def stream(url: str, seconds: float) -> tuple[list[dict[str, Any]], int | None]:
        async with websockets.connect(url, open_timeout=WS_TIMEOUT_S, close_timeout=5) as ws:
            await ws.send(start_message(KEY))
            assert (await next_event(ws))["type"] == "session.started"
            try:
                for _ in range(round(seconds * 50)):
                    await ws.send(SILENT_FRAME)
            except websockets.ConnectionClosed:
                pass  # refused part-way: what it said is read below
            events = await until_closed(ws)
            return events, ws.close_code

    with running_gateway(fake_stack, **AUTH, rate_audio_seconds_per_day=2) as gateway:
        events, close_code = asyncio.run(stream(gateway.url, 3.0))
        errors = [event for event in events if event.get("type") == "error"]
        assert errors and errors[-1]["code"] == "rate_limited", events
        assert isinstance(errors[-1].get("retry_after_s"), int) and errors[-1]["retry_after_s"] > 0
        assert close_code == 1008

        response = LOOPBACK.post(f"{gateway.http}/v1/asr", content=silent_wav(3.0),
                              headers={**bearer(KEY), "Content-Type": "audio/wav"}, timeout=30)
        assert response.status_code == 429, response.text
        assert response.json()["error"] == "rate_limited"
        retry_after(response)


# --- the gateway process: bind safety and secret-free logs ---------------------------------------


def gateway_env(**variables: str) -> dict[str, str]:
    """The test's environment without any INZWA_* setting or metrics dir, plus `variables`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("INZWA_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(variables)
    return env


def test_gateway_refuses_a_public_bind_without_credentials(tmp_path: Path) -> None:
    env = gateway_env(INZWA_HOST="0.0.0.0", INZWA_PORT=str(free_port()))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "gateway"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert time.monotonic() - started < 30
    assert "INZWA_API_KEYS" in done.stderr and "loopback" in done.stderr, done.stderr


@dataclass(frozen=True)
class GatewayLog:
    """What a real gateway process logged while it was sent good and bad credentials."""

    text: str
    key: str
    wrong_key: str
    short_wrong_key: str
    secret: str
    jwts: tuple[str, ...]


def wait_healthy(process: subprocess.Popen[bytes], http: str, log_path: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, "the gateway did not come up"
        try:
            if LOOPBACK.get(f"{http}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


async def send_raw_start(url: str, text: str) -> None:
    """A start message exactly as given (for example compact JSON); waits for the refusal."""
    async with websockets.connect(url, open_timeout=WS_TIMEOUT_S, close_timeout=5) as ws:
        await ws.send(text)
        await until_closed(ws)


@pytest.fixture(scope="module")
def gateway_log(tmp_path_factory: pytest.TempPathFactory) -> GatewayLog:
    """Run `python -m gateway` at DEBUG with no orchestrator, exercise auth on REST and the
    WebSocket, stop it, and return its stderr (the JSON log)."""
    tmp_path = tmp_path_factory.mktemp("gateway-log")
    key = "sk-logtest-" + uuid.uuid4().hex
    secret = "logtest-secret-" + uuid.uuid4().hex * 2
    logged = GatewayLog(text="", key=key, wrong_key="sk-logtest-wrong-" + uuid.uuid4().hex,
                        short_wrong_key="sk-typo-" + uuid.uuid4().hex[:10], secret=secret,
                        jwts=(make_token(secret, "log-tester", 3600), make_token(secret, "log-tester", -60)))
    good_jwt, expired_jwt = logged.jwts
    port = free_port()
    env = gateway_env(INZWA_HOST="127.0.0.1", INZWA_PORT=str(port), INZWA_API_KEYS=key,
                      INZWA_JWT_SECRET=secret, INZWA_LOG_LEVEL="DEBUG",
                      INZWA_ZMQ_BASE_PORT=str(free_port_range(40)), INZWA_REQUEST_TIMEOUT_S="1",
                      INZWA_START_TIMEOUT_S="5")
    log_path = tmp_path / "gateway.log"
    http = f"http://127.0.0.1:{port}"
    url = f"ws://127.0.0.1:{port}/ws/audio"
    tokens = (key, logged.wrong_key, good_jwt, expired_jwt)
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "gateway"], env=env, cwd=tmp_path,
                                   stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_healthy(process, http, log_path)
        with httpx.Client(timeout=10) as client:
            statuses = [client.get(f"{http}/v1/models", headers=bearer(t)).status_code for t in tokens]
            tagged = client.get(f"{http}/v1/models", headers={**bearer(key), "X-Request-ID": "test-req-123"})
        # No orchestrator: a good credential gets as far as 503, a bad one stops at 401.
        assert statuses == [503, 401, 503, 401]
        assert tagged.status_code == 503 and tagged.headers["X-Request-ID"] == "test-req-123"

        ws_codes = [ws_handshake(url, token)[0]["code"] for token in tokens]
        assert ws_codes == ["not_ready", "invalid_credentials", "not_ready", "token_expired"]
        assert ws_handshake(url, headers=bearer(logged.wrong_key))[0]["code"] == "invalid_credentials"
        assert ws_handshake(url, headers=bearer(key))[0]["code"] == "not_ready"
        compact = json.dumps({"type": "start", "auth_token": logged.short_wrong_key}, separators=(",", ":"))
        asyncio.run(send_raw_start(url, compact))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return replace(logged, text=log_path.read_text())


def test_logs_are_json_lines_with_request_ids(gateway_log: GatewayLog) -> None:
    lines = [line for line in gateway_log.text.splitlines() if line.strip()]
    assert lines
    entries = []
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert {"ts", "level", "process"} <= set(entry), line
        assert entry["process"] == "gateway"
        entries.append(entry)
    assert any(entry.get("request_id") == "test-req-123" for entry in entries)
    assert any(entry["level"] == "DEBUG" for entry in entries)  # the level that logs the most


def test_logs_never_contain_secrets(gateway_log: GatewayLog) -> None:
    for leaked in (gateway_log.key, gateway_log.wrong_key, gateway_log.secret, *gateway_log.jwts):
        assert leaked not in gateway_log.text


def test_debug_logs_hold_no_part_of_an_auth_token(gateway_log: GatewayLog) -> None:
    """websockets' DEBUG frame dumps would show a start message's auth_token, elided in the
    middle so no whole-secret mask matches: they are content, and dropped."""
    text = gateway_log.text
    assert gateway_log.short_wrong_key not in text
    assert gateway_log.key[-12:] not in text


# --- sessions belong to their caller ---------------------------------------------------------------


async def open_chosen(ws: Any, token: str, session_id: str, text: str) -> None:
    """Start a session under a client-chosen id and say `text` in it."""
    await ws.send(json.dumps({"type": "start", "codec": "pcm16", "sample_rate": 16000,
                              "auth_token": token, "session_id": session_id}))
    started = json.loads(await ws.recv())
    assert started["type"] == "session.started" and started["session_id"] == session_id, started
    await ws.send(json.dumps({"type": "text", "text": text}))


async def history_after_reply(ws: Any, http_base: str, token: str, session_id: str) -> str:
    """Wait for the spoken reply's end; the session's history as the caller reads it."""
    async with asyncio.timeout(90):
        while not (isinstance(m := await ws.recv(), str) and json.loads(m)["type"] == "tts.end"):
            pass
    async with httpx.AsyncClient(timeout=10) as http:
        reply = await http.get(f"{http_base}/v1/sessions/{session_id}", headers=bearer(token))
    assert reply.status_code == 200, reply.text
    return json.dumps(reply.json()["history"])


def test_a_client_chosen_session_id_is_scoped_to_its_caller(gateway: GatewayThread) -> None:
    """Two callers choosing the same id get two sessions: neither reads, joins or ends the other's."""
    chosen = str(uuid.uuid4())

    async def scenario() -> tuple[str, str, int]:
        mallory = jwt_for("mallory")
        async with websockets.connect(gateway.url, open_timeout=WS_TIMEOUT_S, close_timeout=5) as ws:
            await open_chosen(ws, KEY, chosen, "Remember the word pineapple.")
            async with asyncio.timeout(90):  # the first caller's reply is under way
                while not (isinstance(m := await ws.recv(), str) and json.loads(m)["type"] == "llm.partial"):
                    pass
            async with httpx.AsyncClient(timeout=10) as http:  # another caller, the same id: nothing
                peek = await http.get(f"{gateway.http}/v1/sessions/{chosen}", headers=bearer(mallory))
            async with websockets.connect(gateway.url, open_timeout=WS_TIMEOUT_S, close_timeout=5) as other:
                await open_chosen(other, mallory, chosen, "Hello there.")
                theirs = await history_after_reply(other, gateway.http, mallory, chosen)
            mine = await history_after_reply(ws, gateway.http, KEY, chosen)  # still answers, its own
            return mine, theirs, peek.status_code

    mine, theirs, peeked = asyncio.run(scenario())
    assert peeked == 404
    assert "pineapple" in mine and "pineapple" not in theirs
    assert "Hello there." in theirs and "Hello there." not in mine
