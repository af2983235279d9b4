"""WebRTC end to end: aiortc as the client, fixture clips as its microphone, the real stack.

The shared stack runs with INZWA_ENABLE_WEBRTC=true (tests/conftest.py). Settings that need
other values (a short connect timeout, WebRTC off) get a gateway of their own in this process
(tests/gateway_thread.py), on the same stack.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from aiortc import RTCPeerConnection
from prometheus_client import REGISTRY

from asr_worker.wer import normalize
from common.audio import rms_dbfs
from gateway.client import load_clip
from gateway.rtc_client import RtcCall, connect, time_frame
from gateway.rtc_media import PcmTrack
from tests.gateway_thread import running_gateway
from tests.loopback import LOOPBACK
from tests.stack import Stack
from tests.test_e2e import heard_words, sounds_like

pytestmark = pytest.mark.e2e

SILENCE_1S = b"\0" * 32000


def numbers(metrics: dict[str, Any]) -> list[float]:
    return [metrics[k] for k in ("asr_final_ms", "first_token_ms", "first_audio_ms")]


async def spoken_turn(stack: Stack, clip: Path) -> RtcCall:
    call = await connect(stack.http, language="en")
    call.play(load_clip(clip) + SILENCE_1S)
    await call.wait_for(lambda: call.of("turn.metrics") or call.of("error"), 90)
    if not call.of("error"):
        await call.drained()  # the reply's audio, not only its events
    return call


def test_a_full_turn_over_webrtc(stack: Stack, fixtures_dir: Path, whisper_engine: Any) -> None:
    async def run() -> RtcCall:
        call = await spoken_turn(stack, fixtures_dir / "q_en_capital.wav")
        await call.close()
        return call

    call = asyncio.run(run())
    assert not call.of("error"), call.events
    heard = normalize(" ".join(e["text"] for e in call.of("asr.final")))
    assert "capital" in heard and "zimbabwe" in heard
    reply = call.of("tts.end")[0]["text"]
    assert reply.strip()
    # every phrase was reported as heard, in order, and together they are the reply
    assert normalize(" ".join(e["text"] for e in call.of("tts.phrase"))) == normalize(reply)
    assert call.heard_s() > 0.5  # reply audio came over the track, and it is not silence
    audio = call.reply_audio()
    assert rms_dbfs(audio) > -40.0
    # it is the reply: transcribing what came over the track recovers most of its words
    said = normalize(reply).split()
    heard = heard_words(whisper_engine, audio)  # each stretch between pauses on its own
    assert sum(sounds_like(word, heard) for word in said) / len(said) >= 0.5, (reply, heard)
    metrics = call.of("turn.metrics")[0]
    assert metrics["turn_id"] == call.of("tts.end")[0]["turn_id"] and metrics["interrupted"] is False
    assert all(isinstance(v, float) and 0 <= v < 30000 for v in numbers(metrics)), metrics
    assert call.v2v_ms() is not None


def test_barge_in_over_webrtc_keeps_only_what_was_heard(stack: Stack, fixtures_dir: Path) -> None:
    async def run() -> tuple[RtcCall, dict[str, Any]]:
        call = await connect(stack.http, language="en")
        call.play(load_clip(fixtures_dir / "q_en_long.wav") + b"\0" * 9600)
        await call.wait_for(lambda: call.heard_s() > 2.5, 90)  # 2.5 s of the reply played
        call.play(load_clip(fixtures_dir / "q_en_weather.wav"))
        await call.wait_for(lambda: call.of("tts.end") and len(call.of("turn.metrics")) >= 2, 90)
        async with httpx.AsyncClient() as http:
            state = (await http.get(f"{stack.http}/v1/sessions/{call.session_id}")).json()
        await call.close()
        return call, state

    call, state = asyncio.run(run())
    cancels = call.of("tts.cancel")
    assert len(cancels) == 1, [e["type"] for e in call.events]
    cut = cancels[0]["turn_id"]
    assert call.of("tts.end")[0]["turn_id"] != cut
    interrupted = [m for m in call.of("turn.metrics") if m["turn_id"] == cut]
    assert interrupted and interrupted[0]["interrupted"] is True
    # the server dropped the rest at once: nothing audible between the cancel and the next reply
    cancelled_at = call.at(cancels[0])
    next_start = call.at(next(e for e in call.of("tts.start") if e["turn_id"] != cut))
    assert not [t for t in call.audible_at if cancelled_at + 0.3 < t < next_start]
    generated = "".join(e["token"] for e in call.of("llm.partial") if e["turn_id"] == cut)
    history = state["history"]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    kept = history[1]["content"]
    assert kept and normalize(generated).startswith(normalize(kept)) and len(kept) < len(generated.strip())
    heard = " ".join(e["text"] for e in call.of("tts.phrase") if e["turn_id"] == cut)
    assert normalize(kept) == normalize(heard)  # the history is what the client was told it heard


def _wait_back(stack: Stack, program: str, old_pid: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while stack.pids().get(program) in (None, old_pid) or not stack.ready():
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.3)


def test_killing_the_tts_worker_mid_reply_still_completes_the_turn(
    stack: Stack, fixtures_dir: Path
) -> None:
    killed: list[int] = []

    async def run() -> RtcCall:
        call = await connect(stack.http, language="en")
        call.play(load_clip(fixtures_dir / "q_en_long.wav") + SILENCE_1S)
        await call.wait_for(lambda: call.heard_s() > 0.5, 90)
        pid = stack.pids()["tts_worker"]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        await call.wait_for(lambda: call.of("turn.metrics") or call.of("error"), 120)
        if not call.of("error"):
            await call.drained()
        await call.close()
        return call

    call = asyncio.run(run())
    _wait_back(stack, "tts_worker", killed[0])
    assert not call.of("error") and not call.of("tts.cancel"), call.events
    end = call.of("tts.end")[0]
    assert end["text"].strip()
    assert normalize(" ".join(e["text"] for e in call.of("tts.phrase"))) == normalize(end["text"])
    assert call.heard_s() > 1.0


def _closed(reason: str) -> float:
    return REGISTRY.get_sample_value("inzwa_rtc_peers_closed_total", {"reason": reason}) or 0.0


def test_a_peer_that_never_completes_ice_is_cleaned_up_and_counted(stack: Stack) -> None:
    async def offer_and_vanish(http: str) -> dict[str, Any]:
        pc = RTCPeerConnection()
        pc.createDataChannel("events")
        pc.addTrack(PcmTrack())
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
        await pc.close()  # its ICE agent is gone: the server's checks go nowhere
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(f"{http}/rtc/session", json=offer)
        assert response.status_code == 200, response.text
        return dict(response.json())

    before = _closed("connect_timeout")
    with running_gateway(stack, enable_webrtc=True, rtc_connect_timeout_s=1.0,
                         rate_concurrent_sessions=1) as gateway:
        app: Any = gateway.server.config.app
        answer = asyncio.run(offer_and_vanish(gateway.http))
        assert answer["type"] == "answer" and answer["session_id"]
        deadline = time.monotonic() + 15
        while app.state.bridge.connections or sum(app.state.guard.limits._sessions.values()):
            assert time.monotonic() < deadline, "the dead peer's session was not cleaned up"
            time.sleep(0.1)
        assert _closed("connect_timeout") == before + 1
        # its slot is back: with a limit of one session, a new one is admitted
        answer = asyncio.run(offer_and_vanish(gateway.http))
        assert answer["session_id"]


def test_a_peer_whose_audio_stops_is_ended_and_told(stack: Stack) -> None:
    async def run(http: str) -> RtcCall:
        call = await connect(http)
        call.mic.stop()  # its RTP stops, as when a network drops or a tab freezes
        await call.wait_for(lambda: call.of("error"), 20)
        await call.close()
        return call

    before = _closed("media_timeout")
    with running_gateway(stack, enable_webrtc=True, rtc_media_timeout_s=1.5) as gateway:
        call = asyncio.run(run(gateway.http))
        app: Any = gateway.server.config.app
        assert call.of("error")[0]["code"] == "media_timeout"
        assert not app.state.bridge.connections
    assert _closed("media_timeout") == before + 1


async def _offer(data_channel: bool, audio: bool) -> str:
    pc = RTCPeerConnection()
    if data_channel:
        pc.createDataChannel("events")
    if audio:
        pc.addTrack(PcmTrack())
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return str(sdp)


def test_webrtc_off_and_bad_offers_are_refused_with_reasons(stack: Stack) -> None:
    with running_gateway(stack, enable_webrtc=False) as gateway:
        response = LOOPBACK.post(f"{gateway.http}/rtc/session", json={"sdp": "v=0", "type": "offer"})
        assert response.status_code == 404 and response.json()["error"] == "webrtc_disabled"
    for body, code in [({"sdp": "v=0", "type": "answer"}, "bad_offer"), ({"type": "offer"}, "bad_offer"),
                       ({"sdp": "v=0\r\nnonsense", "type": "offer"}, "bad_sdp"),
                       ({"sdp": "v=0", "type": "offer", "language": "tlh"}, "unsupported_language"),
                       ({"sdp": "v=0", "type": "offer", "session_id": "abc"}, "bad_session_id"),
                       ({"sdp": asyncio.run(_offer(False, True)), "type": "offer"}, "bad_sdp"),
                       ({"sdp": asyncio.run(_offer(True, False)), "type": "offer"}, "bad_sdp")]:
        response = LOOPBACK.post(f"{stack.http}/rtc/session", json=body, timeout=30)
        assert response.status_code == 400 and response.json()["error"] == code, (body, response.text)


BAD_CONTROL = [  # the same control messages over the WebSocket and the data channel
    "{not json",
    json.dumps({"type": "shout"}),
    json.dumps({"type": "start"}),
    json.dumps({"type": "text", "text": "   "}),
    json.dumps({"type": "text", "text": "x" * 2001}),
    json.dumps({"type": "end_turn", "pad": "x" * 5000}),
]


async def _ws_errors(url: str) -> list[str]:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "start", "codec": "pcm16", "sample_rate": 16000}))
        assert json.loads(await ws.recv())["type"] == "session.started"
        codes = []
        for message in BAD_CONTROL:
            await ws.send(message)
            event = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert event["type"] == "error", event
            codes.append(event["code"])
        return codes


async def _channel_errors(http: str) -> list[str]:
    call = await connect(http)
    try:
        for count, message in enumerate([*BAD_CONTROL, b"\x00\x01"], start=1):
            call.channel.send(message)

            def answered(n: int = count) -> bool:
                return len(call.of("error")) >= n
            await call.wait_for(answered, 10)
        return [e["code"] for e in call.of("error")]
    finally:
        await call.close()


def test_bad_input_over_the_data_channel_gets_the_websockets_errors(stack: Stack) -> None:
    ws_codes = asyncio.run(_ws_errors(stack.url))
    rtc_codes = asyncio.run(_channel_errors(stack.http))
    assert ws_codes == ["bad_json", "bad_message", "already_started", "empty_text", "text_too_long",
                        "message_too_large"]
    assert rtc_codes == [*ws_codes, "bad_message"]  # and binary on the events channel


def test_a_typed_message_over_the_data_channel_gets_a_spoken_reply(stack: Stack) -> None:
    async def run() -> RtcCall:
        call = await connect(stack.http, language="en")
        call.send({"type": "text", "text": "What is the capital city of Zimbabwe?"})
        await call.wait_for(lambda: call.of("turn.metrics") or call.of("error"), 90)
        if not call.of("error"):
            await call.drained()
        await call.close()
        return call

    call = asyncio.run(run())
    assert not call.of("error"), call.events
    assert normalize(call.of("asr.final")[0]["text"]) == "what is the capital city of zimbabwe"
    assert call.of("tts.end")[0]["text"].strip() and call.heard_s() > 0.5
    metrics = call.of("turn.metrics")[0]
    assert all(isinstance(v, float) and 0 <= v < 30000 for v in numbers(metrics)), metrics


def test_a_call_is_drained_only_once_its_frames_are_current() -> None:
    """A backlog of frames (a busy client, or a sender that fell behind) is not "drained" even
    when its newest decoded frames are a second of silence: a pause in the reply can sit in
    front of its later phrases."""
    from fractions import Fraction

    import av

    def frame(media_s: float) -> av.AudioFrame:
        out = av.AudioFrame(format="s16", layout="mono", samples=960)
        out.pts, out.time_base, out.sample_rate = round(media_s * 48000), Fraction(1, 48000), 48000
        return out

    call = RtcCall(pc=RTCPeerConnection(), mic=PcmTrack(), channel=None)
    start = time.monotonic()
    time_frame(call, frame(0.0))  # on time: the path's own delay
    assert call.caught_up()
    time.sleep(0.3)
    time_frame(call, frame(0.02))  # 0.3 s late: from a backlog
    assert not call.caught_up()
    time_frame(call, frame(time.monotonic() - start))  # current again
    assert call.caught_up()
