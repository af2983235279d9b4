"""The page in a real browser against the real stack: Chromium (headless, driven by Playwright)
with its fake microphone playing a fixture WAV, over the WebSocket and over WebRTC.

Every figure asserted is one the page measured itself and exposes on `window.inzwa`: what the
server transcribed, the reply text, the reply audio bytes received and the seconds of sound the
page's own audio graph played, and the latency it felt. Chromium comes from the system
(`scripts/install-system-deps.sh`); Playwright's own browser download is not used.
"""

from __future__ import annotations

import math
import shutil
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr

from common.audio import read_wav

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / ".artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FAKE_MIC_RATE = 48000  # what a real microphone delivers; Chromium resamples any rate it is given
LEAD_S = 3.0  # silence before the question: the session (ICE, DTLS for WebRTC) is up by then
TAIL_S = 30.0  # silence after it: the fake microphone loops its file, the question must not repeat
TURN_TIMEOUT_S = 120.0

if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is not installed (scripts/install-system-deps.sh installs it)",
                allow_module_level=True)

from playwright.sync_api import Browser, Page, Playwright, sync_playwright  # noqa: E402


def fake_mic_wav(source: Path | None, out: Path) -> Path:
    """A fixture question (or nothing) padded with silence, as 48 kHz mono PCM16."""
    if source is None:
        speech = np.zeros(0, dtype=np.int16)
    else:
        pcm, rate = read_wav(source)
        speech = np.frombuffer(pcm, dtype=np.int16)
        speech = soxr.resample(speech, rate, FAKE_MIC_RATE).astype(np.int16)
    silence = lambda seconds: np.zeros(int(seconds * FAKE_MIC_RATE), dtype=np.int16)  # noqa: E731
    samples = np.concatenate([silence(LEAD_S), speech, silence(TAIL_S)])
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


def launch(playwright: Playwright, mic_wav: Path) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--headless",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_wav}",
        "--disable-features=WebRtcHideLocalIpsWithMdns",  # plain loopback ICE candidates
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run",
    ])


def open_page(browser: Browser, stack: Any, transport: str) -> Page:
    page = browser.new_page()
    page.on("console", lambda message: print(f"page console: {message.text}"))
    page.on("pageerror", lambda error: print(f"page error: {error}"))
    page.goto(f"{stack.http}/")
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
    wait_until(page, "window.inzwa.last_latency_ms !== null || window.inzwa.state === 'stopped'", 10)
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
        heard = state["transcript"].lower()
        assert "capital" in heard and "zimbabwe" in heard, state["transcript"]
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


def test_page_config_and_static_files(stack: Any) -> None:
    import httpx

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
