"""The page in a real browser against the real stack: Chromium (headless, driven by Playwright)
with its fake microphone playing a fixture WAV, over the WebSocket and over WebRTC.

Every figure asserted is one the page measured itself and exposes on `window.inzwa`: what the
server transcribed, the reply text, the reply audio bytes received and the seconds of sound the
page's own audio graph played, and the latency it felt. Chromium comes from the system
(`scripts/install-system-deps.sh`); Playwright's own browser download is not used.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import math
import re
import shutil
import ssl
import tempfile
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soxr
import uvicorn

from common.audio import read_wav

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / ".artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FAKE_MIC_RATE = 48000  # what a real microphone delivers; Chromium resamples any rate it is given
# Silence before the question: the session (ICE, DTLS for WebRTC) is up by then. Start to live
# measured 0.1 s (WebSocket) and 0.2-0.4 s (WebRTC), also with every core busy: 2 s is ~5x that.
LEAD_S = 2.0
TAIL_S = 30.0  # silence after it: the fake microphone loops its file, the question must not repeat
TURN_TIMEOUT_S = 120.0

if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is not installed (scripts/install-system-deps.sh installs it)",
                allow_module_level=True)

from playwright.sync_api import Browser, Page, Playwright, sync_playwright  # noqa: E402
from playwright.sync_api import Error as PlaywrightError  # noqa: E402


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * FAKE_MIC_RATE), dtype=np.int16)


def _speech(source: Path) -> np.ndarray:
    pcm, rate = read_wav(source)
    return soxr.resample(np.frombuffer(pcm, dtype=np.int16), rate, FAKE_MIC_RATE).astype(np.int16)


def fake_mic_wav(source: Path | None, out: Path, *, then: tuple[float, Path] | None = None) -> Path:
    """A fixture question (or nothing) padded with silence, as 48 kHz mono PCM16; `then`: after
    that many seconds of silence, a second clip."""
    parts = [_silence(LEAD_S)]
    if source is not None:
        parts.append(_speech(source))
    if then is not None:
        parts += [_silence(then[0]), _speech(then[1])]
    samples = np.concatenate([*parts, _silence(TAIL_S)])
    with wave.open(str(out), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(FAKE_MIC_RATE)
        wav.writeframes(samples.tobytes())
    return out


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


def launch(playwright: Playwright, mic_wav: Path, *, allow_mic: bool = True,
           extra_args: tuple[str, ...] = ()) -> Browser:
    """Chromium with a fake microphone playing `mic_wav`; the fake permission UI says yes to it
    unless `allow_mic` is False (then headless Chromium denies, as a person clicking Block would)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--headless",
        *(["--use-fake-ui-for-media-stream"] if allow_mic else []),
        "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={mic_wav}",
        "--disable-features=WebRtcHideLocalIpsWithMdns",  # plain loopback ICE candidates
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", *extra_args,
    ])


def open_page(browser: Browser, stack: Any, transport: str) -> Page:
    page = browser.new_page()
    page.on("console", lambda message: print(f"page console: {message.text}"))
    page.on("pageerror", lambda error: print(f"page error: {error}"))
    page.goto(f"{stack.http}/")
    try:
        wait_until(page, "Boolean(window.inzwa && window.inzwa.config)", 15)
    except (TimeoutError, PlaywrightError) as failed:
        # Docker adding or removing a network (the compose tests, beside this one) makes
        # Chromium abort loads in flight with net::ERR_NETWORK_CHANGED: reload once, as a
        # person would
        print(f"page did not start ({failed}); reloading")
        page.reload()
        wait_until(page, "Boolean(window.inzwa && window.inzwa.config)", 15)
    page.select_option("#transport", transport)
    return page


def hooks(page: Page) -> dict[str, Any]:
    return dict(page.evaluate("JSON.parse(JSON.stringify(window.inzwa))"))


def wait_until(page: Page, expression: str, timeout_s: float) -> None:
    """Poll an expression over the DevTools protocol (Playwright's own polling evaluates strings
    inside the page, which the page's Content-Security-Policy rightly forbids)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expression} still false after {timeout_s} s: {hooks(page)}")
        time.sleep(0.2)


def wait_for_reply(page: Page) -> dict[str, Any]:
    """Until the page has played a whole reply (tts.end seen and its audio drained)."""
    wait_until(page, "window.inzwa.replies_ended >= 1 || window.inzwa.state === 'stopped'", TURN_TIMEOUT_S)
    # The felt latency is reported once the reply has drained: after tts.end, seconds of it may
    # still be queued to play (over WebRTC in real time), so the same bound as the turn.
    wait_until(page, "window.inzwa.last_latency_ms !== null || window.inzwa.state === 'stopped'",
               TURN_TIMEOUT_S)
    time.sleep(1.0)  # the jitter buffer's last ~250 ms plays out
    return hooks(page)


def save_screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    copy = ARTIFACTS / shot.name
    shutil.copyfile(shot, copy)
    print(f"screenshot: {shot} (copy: {copy})")
    return copy


def assert_reply_heard(state: dict[str, Any], transport: str) -> None:
    assert state["errors"] == [], state["errors"]
    assert state["transport"] == transport
    assert len(state["reply"].split()) >= 2, state["reply"]
    assert state["reply_bytes_received"] > 0
    assert state["reply_seconds_played"] > 0.5, state  # seconds of sound the page's graph played
    latency = state["last_latency_ms"]
    assert isinstance(latency, int | float) and math.isfinite(latency) and latency > 0, latency
    assert state["turns"] and any(row.get("felt_ms") == latency for row in state["turns"])


@pytest.mark.parametrize("transport", ["websocket", "webrtc"])
def test_spoken_question_in_the_browser(stack: Any, playwright: Playwright, fixtures_dir: Path,
                                        tmp_path: Path, transport: str) -> None:
    browser = launch(playwright, fake_mic_wav(fixtures_dir / "q_en_capital.wav", tmp_path / "mic.wav"))
    try:
        page = open_page(browser, stack, transport)
        page.click("#start")
        state = wait_for_reply(page)
        # Whisper base hears the name as "Zimbabwe" or "the bomb we" after Opus: the plain words decide
        heard = set(re.findall(r"[a-z]+", state["transcript"].lower()))
        assert {"what", "capital", "city"} <= heard, state["transcript"]
        assert_reply_heard(state, transport)
        if transport == "websocket":  # the page's own player: it cannot play more than it got
            assert state["reply_seconds_played"] <= state["reply_seconds_received"] + 0.1, state
        save_screenshot(page, tmp_path, f"browser-turn-{transport}")
        page.click("#stop")
        wait_until(page, "window.inzwa.state === 'stopped'", 10)
    finally:
        browser.close()


@pytest.mark.parametrize("transport", ["websocket", "webrtc"])
def test_typed_message_gets_a_spoken_reply(stack: Any, playwright: Playwright, tmp_path: Path,
                                           transport: str) -> None:
    browser = launch(playwright, fake_mic_wav(None, tmp_path / "silence.wav"))
    try:
        page = open_page(browser, stack, transport)
        page.click("#start")
        wait_until(page, "window.inzwa.state === 'live'", 30)
        page.fill("#message", "What is the capital city of France?")
        page.click("#send")
        state = wait_for_reply(page)
        assert "capital city of france" in state["transcript"].lower(), state["transcript"]
        assert_reply_heard(state, transport)
        save_screenshot(page, tmp_path, f"browser-typed-{transport}")
    finally:
        browser.close()


def test_a_spoken_turn_after_a_typed_one_reports_its_felt_latency(
    stack: Any, playwright: Playwright, fixtures_dir: Path, tmp_path: Path
) -> None:
    """The typed turn takes the server's turn 1 while the ASR's first final is still its own
    first: the spoken question's reply carries another id than its final, and the page ties
    the two by order (a regression: it keyed them by id, and such a turn never reported its
    latency; early replies the speaker talks over shift the ids the same way)."""
    mic = fake_mic_wav(None, tmp_path / "mic.wav", then=(16.0, fixtures_dir / "q_en_capital.wav"))
    browser = launch(playwright, mic)
    try:
        page = open_page(browser, stack, "websocket")
        page.click("#start")
        wait_until(page, "window.inzwa.state === 'live'", 30)
        page.fill("#message", "Say hello.")
        page.click("#send")
        wait_until(page, "window.inzwa.turns.filter(t => t.felt_ms != null).length >= 1", TURN_TIMEOUT_S)
        wait_until(page, "window.inzwa.turns.filter(t => t.felt_ms != null).length >= 2", TURN_TIMEOUT_S)
        state = hooks(page)
        assert "capital" in state["transcript"].lower(), (state["transcript"], state["turns"])
        felt = [t["felt_ms"] for t in state["turns"] if t.get("felt_ms") is not None]
        assert len(felt) == 2 and all(0 < ms < 30000 for ms in felt), state["turns"]
    finally:
        browser.close()


def test_page_config_and_static_files(stack: Any) -> None:
    config = httpx.get(f"{stack.http}/client-config", timeout=10).json()
    assert config["auth_required"] is False
    assert config["webrtc"] is True  # the shared stack runs with INZWA_ENABLE_WEBRTC=true
    assert config["languages"] == sorted(config["languages"]) and "en" in config["languages"]
    assert config["default_language"] == "en"
    page = httpx.get(f"{stack.http}/", timeout=10)
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    script = httpx.get(f"{stack.http}/static/app.js", timeout=10)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert httpx.get(f"{stack.http}/static/no-such-file.js", timeout=10).status_code == 404


PAGE_KEY = "page-test-key-5d1f3a9c"


def test_page_with_credentials_asks_for_a_key_and_says_when_it_is_wrong(
        stack: Any, playwright: Playwright, tmp_path: Path) -> None:
    """A gateway with API keys: the page shows its key field, a wrong key gets a plain message,
    the right one a live session (the key travels in the start message, never in the URL)."""
    from tests.gateway_thread import running_gateway

    browser = launch(playwright, fake_mic_wav(None, tmp_path / "silence.wav"))
    try:
        with running_gateway(stack, api_keys=[PAGE_KEY]) as gateway:
            page = open_page(browser, gateway, "websocket")
            assert page.is_visible("#token")
            page.fill("#token", "not-the-key")
            page.click("#start")
            wait_until(page, "window.inzwa.state === 'stopped'", 30)
            assert [e["code"] for e in hooks(page)["errors"]] == ["invalid_credentials"]
            assert "not accepted" in page.inner_text("#alert")
            page.fill("#token", PAGE_KEY)
            page.click("#start")
            wait_until(page, "window.inzwa.state === 'live'", 30)
            page.click("#stop")
    finally:
        browser.close()


@pytest.mark.parametrize("transport", ["websocket", "webrtc"])
def test_speaking_over_the_reply_interrupts_it(stack: Any, playwright: Playwright, fixtures_dir: Path,
                                              tmp_path: Path, transport: str) -> None:
    """A long answer, interrupted by a second question ~4 s into it (headphones: interrupting on):
    the page flushes what it had buffered, shows the cut, and answers the second question."""
    mic = fake_mic_wav(fixtures_dir / "q_en_long.wav", tmp_path / "mic.wav",
                       then=(5.5, fixtures_dir / "q_en_weather.wav"))
    browser = launch(playwright, mic)
    try:
        page = open_page(browser, stack, transport)
        page.check("#barge-in")
        page.click("#start")
        wait_until(page, "window.inzwa.replies_cut >= 1 && window.inzwa.replies_ended >= 1", TURN_TIMEOUT_S)
        time.sleep(1.0)
        state = hooks(page)
        assert state["errors"] == [], state["errors"]
        assert page.locator(".cut-mark").count() == 1  # the interrupted reply is marked as cut
        assert any(row.get("interrupted") for row in state["turns"]), state["turns"]
        assert "tomorrow" in state["transcript"].lower(), state["transcript"]  # the second question
        if transport == "websocket":  # the page's own jitter buffer: emptied at once, nothing after
            assert len(state["cuts"]) == 1 and state["cuts"][0]["played_after_s"] == 0, state["cuts"]
        save_screenshot(page, tmp_path, f"browser-barge-in-{transport}")
    finally:
        browser.close()


def test_push_to_talk_hears_only_while_held(stack: Any, playwright: Playwright, fixtures_dir: Path,
                                            tmp_path: Path) -> None:
    """Push-to-talk: the microphone sends silence until the button is held; letting go in the middle
    of the question sends end_turn, and the rest of the question is never heard."""
    browser = launch(playwright, fake_mic_wav(fixtures_dir / "q_en_capital.wav", tmp_path / "mic.wav"))
    try:
        page = open_page(browser, stack, "websocket")
        page.check("#ptt")
        page.click("#start")
        wait_until(page, "window.inzwa.state === 'live'", 30)
        assert hooks(page)["mic_muted"] is True
        page.hover("#hold")
        page.mouse.down()  # before the question starts (LEAD_S after Start)
        # Let go ~0.6 s into the speech the page sent ("What is the…"); "Zimbabwe" comes ~2 s in.
        wait_until(page, "window.inzwa.speech_sent_s >= 0.6", 30)
        page.mouse.up()
        state = wait_for_reply(page)
        assert state["sent"].get("end_turn") == 1, state["sent"]
        heard = state["transcript"].lower()
        print(f"push-to-talk: heard {state['transcript']!r}, felt latency {state['last_latency_ms']} ms")
        assert heard and "zimbabwe" not in heard, state["transcript"]
        assert_reply_heard(state, "websocket")
    finally:
        browser.close()


def test_microphone_denied_says_how_to_allow_it(stack: Any, playwright: Playwright, tmp_path: Path) -> None:
    browser = launch(playwright, fake_mic_wav(None, tmp_path / "silence.wav"), allow_mic=False)
    try:
        page = open_page(browser, stack, "websocket")
        page.click("#start")
        wait_until(page, "window.inzwa.state === 'stopped'", 30)
        assert [e["code"] for e in hooks(page)["errors"]] == ["mic"]
        assert "Microphone access was denied" in page.inner_text("#alert")
        assert page.is_enabled("#start")  # the person can allow it and press Start again
    finally:
        browser.close()


def test_page_off_https_says_the_microphone_needs_a_secure_origin(
        stack: Any, playwright: Playwright, tmp_path: Path) -> None:
    """Opened as http://<a LAN name>/ (here a name mapped to loopback, which the gateway is told to
    trust): not a secure context, so the page explains instead of offering Start."""
    from tests.gateway_thread import running_gateway

    rules = "--host-resolver-rules=MAP inzwa-lan.test 127.0.0.1"
    browser = launch(playwright, fake_mic_wav(None, tmp_path / "silence.wav"), extra_args=(rules,))
    try:
        with running_gateway(stack, trusted_hosts=["inzwa-lan.test"]) as gateway:
            page = browser.new_page()
            page.goto(f"http://inzwa-lan.test:{gateway.port}/")
            wait_until(page, "window.inzwa && window.inzwa.errors.length > 0", 15)
            assert page.evaluate("window.isSecureContext") is False
            assert "only on https://" in page.inner_text("#alert")
            assert page.is_disabled("#start")
    finally:
        browser.close()


@contextlib.contextmanager
def tls_gateway(stack: Any, cert: Any, lan_name: str) -> Iterator[str]:
    """A gateway on the shared stack serving HTTPS/WSS itself with an `inzwa certs` pair; its URL."""
    from gateway.app import create_app
    from gateway.server import server_options
    from tests.gateway_thread import gateway_settings

    settings = gateway_settings(stack, tls_certfile=str(cert.cert), tls_keyfile=str(cert.key),
                                trusted_hosts=[lan_name])
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.port,
                                           log_config=None, access_log=False, **server_options(settings)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    trusting = ssl.create_default_context(cafile=str(cert.cert))
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"https://127.0.0.1:{settings.port}/readyz", verify=trusting).status_code == 200:
                    break
            assert time.monotonic() < deadline and thread.is_alive(), "the TLS gateway did not get ready"
            time.sleep(0.2)
        yield f"https://{lan_name}:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(15)


def test_lan_trial_over_https_with_inzwa_certs(stack: Any, playwright: Playwright, fixtures_dir: Path,
                                               tmp_path: Path) -> None:
    """The README's LAN trial: `inzwa certs --name <LAN name>`, the gateway on HTTPS/WSS, the page
    opened by that name from a browser that accepts exactly that certificate (as a person does when
    they check its fingerprint): a secure context, so the microphone works and a turn completes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from deploy.certs import make_certificate

    lan_name = "inzwa-lan.test"
    cert = make_certificate(tmp_path / "tls", extra_names=[lan_name])
    spki = x509.load_pem_x509_certificate(cert.cert.read_bytes()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    accept = f"--ignore-certificate-errors-spki-list={pin}"
    rules = f"--host-resolver-rules=MAP {lan_name} 127.0.0.1"
    browser = launch(playwright, fake_mic_wav(fixtures_dir / "q_en_capital.wav", tmp_path / "mic.wav"),
                     extra_args=(rules, accept))
    try:
        with tls_gateway(stack, cert, lan_name) as url:
            page = browser.new_page()
            page.goto(f"{url}/")
            wait_until(page, "Boolean(window.inzwa && window.inzwa.config)", 15)
            assert page.evaluate("window.isSecureContext && location.protocol") == "https:"
            page.select_option("#transport", "websocket")  # wss:// to the same origin
            page.click("#start")
            state = wait_for_reply(page)
            assert "capital" in state["transcript"].lower(), (state["transcript"], state["turns"])
            assert_reply_heard(state, "websocket")
    finally:
        browser.close()


def test_refusals_get_plain_messages(stack: Any, playwright: Playwright, tmp_path: Path) -> None:
    """Close code 1013 both ways: a gateway with no assistant behind it (not ready), and a second
    session over a one-session limit (rate limited, with the server's retry time)."""
    from tests.gateway_thread import GatewayThread, gateway_settings, running_gateway
    from tests.stack import free_port_range

    browser = launch(playwright, fake_mic_wav(None, tmp_path / "silence.wav"))
    # A short run dir: its plane's IPC socket paths must fit in 107 bytes, which a tmp_path under
    # pytest-xdist's worker folders does not leave room for.
    nobody = tempfile.TemporaryDirectory(prefix="inzwa-")
    lonely = GatewayThread(gateway_settings(stack, run_dir=Path(nobody.name),
                                            zmq_base_port=free_port_range(40)))
    lonely.thread.start()  # no orchestrator behind it: /readyz stays 503, the page may still load
    try:
        wait_until_http(f"{lonely.http}/healthz")
        page = open_page(browser, lonely, "websocket")
        page.click("#start")
        wait_until(page, "window.inzwa.state === 'stopped'", 30)
        assert [e["code"] for e in hooks(page)["errors"]] == ["not_ready"]
        assert "still starting" in page.inner_text("#alert")
        with running_gateway(stack, rate_concurrent_sessions=1) as gateway:
            first, second = open_page(browser, gateway, "websocket"), open_page(browser, gateway, "websocket")
            first.click("#start")
            wait_until(first, "window.inzwa.state === 'live'", 30)
            second.click("#start")
            wait_until(second, "window.inzwa.state === 'stopped'", 30)
            assert [e["code"] for e in hooks(second)["errors"]] == ["rate_limited"]
            assert "Too many requests" in second.inner_text("#alert")
            first.click("#stop")
    finally:
        lonely.stop()
        nobody.cleanup()
        browser.close()


def wait_until_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        assert time.monotonic() < deadline, f"{url} did not answer"
        time.sleep(0.2)
