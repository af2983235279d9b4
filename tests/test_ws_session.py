"""The WebSocket session under abuse, and its newer messages: real gateways on the real stack.

Limits that need their own values (one session slot, a one-second idle timeout, a short turn)
run on a gateway of their own in this process (tests/gateway_thread.py), where its guard and
bridge can be inspected after the fact.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import websockets
from prometheus_client import REGISTRY

from asr_worker.wer import normalize
from gateway.client import Talker, TalkResult, load_clip
from tests.gateway_thread import GatewayThread, running_gateway
from tests.stack import Stack

pytestmark = pytest.mark.e2e

START = json.dumps({"type": "start", "codec": "pcm16", "sample_rate": 16000})
FRAME_100MS = b"\0" * 3200


def _slots_taken(gateway: GatewayThread) -> int:
    app: Any = gateway.server.config.app
    return sum(app.state.guard.limits._sessions.values())


def _wait_released(gateway: GatewayThread, timeout_s: float = 10.0) -> None:
    app: Any = gateway.server.config.app
    deadline = time.monotonic() + timeout_s
    while _slots_taken(gateway) or app.state.bridge.connections:
        assert time.monotonic() < deadline, (app.state.guard.limits._sessions, app.state.bridge.connections)
        time.sleep(0.05)


async def _leave_early(url: str, index: int) -> None:
    """Connect and leave at one of the handshake's points, never reading session.started."""
    ws = await websockets.connect(url)
    if index % 3:
        await ws.send(START)
        await asyncio.sleep(0.005 * (index % 7))  # somewhere inside admit / open, or just after
    if index % 2:
        ws.transport.abort()  # no close handshake: as a crashed client leaves
    else:
        await ws.close()


async def _one_session(url: str) -> dict[str, Any]:
    async with websockets.connect(url) as ws:
        await ws.send(START)
        return dict(json.loads(await asyncio.wait_for(ws.recv(), 10)))


def test_handshake_disconnects_leak_no_slot(stack: Stack) -> None:
    with running_gateway(stack, rate_concurrent_sessions=1) as gateway:
        async def run() -> dict[str, Any]:
            for index in range(20):
                await _leave_early(gateway.url, index)
            await asyncio.to_thread(_wait_released, gateway)
            return await _one_session(gateway.url)

        started = asyncio.run(run())
        assert started["type"] == "session.started", started  # the only slot is free again
        _wait_released(gateway)
        assert _slots_taken(gateway) == 0


def _too_fast() -> float:
    return REGISTRY.get_sample_value("inzwa_dropped_frames_total", {"reason": "audio_too_fast"}) or 0.0


def test_audio_faster_than_real_time_is_capped(stack: Stack) -> None:
    async def flood(url: str) -> tuple[list[dict[str, Any]], int | None]:
        async with websockets.connect(url) as ws:
            await ws.send(START)
            await ws.recv()
            for _ in range(100):  # 10 s of audio at once
                await ws.send(FRAME_100MS)
            await ws.send(json.dumps({"type": "text", "text": ""}))  # answered after the audio
            events = []
            while not any(e.get("code") == "empty_text" for e in events):
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            return events, ws.close_code

    before = _too_fast()
    with running_gateway(stack, session_audio_burst_s=2.0) as gateway:
        events, close_code = asyncio.run(flood(gateway.url))
    codes = [e.get("code") for e in events if e.get("type") == "error"]
    assert codes.count("audio_too_fast") == 1, codes  # told once, not per frame
    assert close_code is None  # the session goes on
    dropped = _too_fast() - before
    assert 50 <= dropped <= 80, dropped  # the 2 s burst (+1.2 x the time taken) got through


def test_an_idle_session_is_closed_with_a_reason(stack: Stack) -> None:
    async def idle(url: str) -> tuple[dict[str, Any], int | None]:
        async with websockets.connect(url) as ws:
            await ws.send(START)
            await ws.recv()
            event = json.loads(await asyncio.wait_for(ws.recv(), 10))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            return event, ws.close_code

    with running_gateway(stack, session_idle_timeout_s=1.0) as gateway:
        event, code = asyncio.run(idle(gateway.url))
        _wait_released(gateway)
    assert event["type"] == "error" and event["code"] == "idle_timeout"
    assert code == 1008


def test_a_turn_longer_than_the_limit_is_ended_for_the_user(stack: Stack, fixtures_dir: Path) -> None:
    """Silence longer than the limit is no turn (a person listening to a long reply with the
    microphone open); speech running past it is ended, with the reason."""
    speech = load_clip(fixtures_dir / "q_en_capital.wav")  # speech from ~0.3 s to ~3.2 s

    async def talk(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with websockets.connect(url) as ws:
            await ws.send(START)
            await ws.recv()
            for _ in range(25):  # 2.5 s of silence
                await ws.send(FRAME_100MS)
            await ws.send(json.dumps({"type": "text", "text": ""}))  # answered after the audio
            quiet = await _events_until(ws, "empty_text")
            for at in range(0, len(speech), 3200):
                await ws.send(speech[at:at + 3200])
            return quiet, await _events_until(ws, "audio_too_long")

    with running_gateway(stack, max_audio_seconds=1.0, session_audio_rate=0) as gateway:
        quiet, spoken = asyncio.run(talk(gateway.url))
    assert [e.get("code") for e in quiet if e.get("type") == "error"] == ["empty_text"], quiet
    assert spoken[-1]["code"] == "audio_too_long" and "1 s" in spoken[-1]["message"], spoken


async def _events_until(ws: Any, code: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while not any(e.get("code") == code for e in events):
        events.append(json.loads(await asyncio.wait_for(ws.recv(), timeout_s)))
    return events


async def _typed_turn(url: str, text: str) -> TalkResult:
    """A typed message on a WebSocket session, read like a spoken turn (to turn.metrics)."""
    talker = Talker(b"", end_turn=False)
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(START)
        talker.result.session_id = json.loads(await ws.recv())["session_id"]
        talker.t0 = time.monotonic()
        await ws.send(json.dumps({"type": "text", "text": text}))
        await asyncio.wait_for(talker._receive(ws), 90)
    return talker.result


def test_a_typed_message_gets_a_spoken_reply_and_turn_metrics(stack: Stack) -> None:
    result = asyncio.run(_typed_turn(stack.url, "  What is the capital city of Zimbabwe?  "))
    assert result.completed and not result.errors, result.summary()
    assert normalize(result.transcript) == "what is the capital city of zimbabwe"
    assert result.reply_text.strip() and len(result.reply_audio) > 16000  # half a second
    metrics = result.metrics
    assert metrics["type"] == "turn.metrics" and metrics["interrupted"] is False
    figures = [metrics[k] for k in ("asr_final_ms", "first_token_ms", "first_audio_ms")]
    assert all(isinstance(v, float) for v in figures), metrics
    assert figures[0] <= figures[1] <= figures[2] < 30000  # the stages, in order


def test_a_spoken_turn_reports_phrases_and_metrics(stack: Stack, fixtures_dir: Path) -> None:
    talker = Talker(load_clip(fixtures_dir / "q_en_weather.wav"))
    result = asyncio.run(talker.run(stack.url, language="en", timeout_s=90))
    assert result.completed and not result.errors, result.summary()
    phrases = [e["text"] for e in result.events if e["type"] == "tts.phrase"]
    assert phrases and normalize(" ".join(phrases)) == normalize(result.reply_text)
    kinds = [e["type"] for e in result.events]
    assert kinds.index("tts.start") < kinds.index("tts.phrase") < kinds.index("tts.end")
    assert kinds[-1] == "turn.metrics"
    assert all(isinstance(result.metrics[k], float) and result.metrics[k] > 0
               for k in ("asr_final_ms", "first_token_ms", "first_audio_ms")), result.metrics
