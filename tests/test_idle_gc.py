"""Idle sessions end (issue 13): in the orchestrator in-process (the clock, the store, the
metric), and end to end on real processes with fake engines (the client's close code and event).

A session silent past `session_idle_s` and the sessions of a gateway that stopped heartbeating
are ended, their live state freed, counted in inzwa_sessions_ended_total{reason}, and their
history stays in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import websockets

from common.frames import AudioIn, ErrorEvent, GatewayHeartbeat, HandoffAsk, HistoryReply, HistoryRequest
from common.metrics import SESSIONS_ENDED
from tests.harness import SID, InProcess
from tests.loopback import LOOPBACK
from tests.stack import Stack
from tests.test_store import run, whole_turn
from tests.test_turns_inprocess import speak

WS_TIMEOUT_S = 30


def ended(reason: str) -> float:
    return float(SESSIONS_ENDED.labels(reason)._value.get())


async def stored(h: InProcess) -> HistoryReply:
    await h.ingress(HistoryRequest(session_id=SID, principal="p1", request_id="read"))
    [reply] = [f for f in h.to_gateway() if isinstance(f, HistoryReply)]
    return reply


def test_a_silent_session_is_ended_and_freed_but_its_history_stays(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> dict[str, Any]:
        await whole_turn(h, 1, "remember pineapple", "I will.")
        before = ended("idle_timeout")
        await asyncio.sleep(0.6)
        await h.ingress(AudioIn(session_id=SID, seq=1, pcm=b"\0\0" * 160))  # activity: not idle
        await asyncio.sleep(0.6)  # 1.2 s in all, but only 0.6 s since the audio
        await h.orchestrator.tick()
        alive_after_audio = SID in h.orchestrator.sessions
        h.to_gateway()
        await asyncio.sleep(1.1)  # silent past the 1 s limit
        await h.orchestrator.tick()
        return {"alive_after_audio": alive_after_audio, "events": h.to_gateway(),
                "count": ended("idle_timeout") - before, "live": dict(h.orchestrator.sessions),
                "stored": await stored(h)}

    # (1 s, not 0.3: a busy machine once stretched a 0.2 s sleep past 0.3 s)
    out = run(InProcess(tmp_path, session_idle_s=1.0, heartbeat_interval_s=10), scenario)
    assert isinstance(out, dict) and out["alive_after_audio"] is True
    errors = [f for f in out["events"] if isinstance(f, ErrorEvent)]
    assert [(e.code, e.fatal) for e in errors] == [("idle_timeout", True)]
    assert out["live"] == {} and out["count"] == 1
    reply = out["stored"]
    assert reply.found and reply.session is not None and reply.session.end_reason == "idle_timeout"
    assert [(m.role, m.content) for m in reply.stored] == [("user", "remember pineapple"),
                                                          ("assistant", "I will.")]


def test_idle_zero_means_sessions_never_idle_out(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> bool:
        await asyncio.sleep(0.05)
        await h.orchestrator.tick()
        return SID in h.orchestrator.sessions

    assert run(InProcess(tmp_path, session_idle_s=0, heartbeat_interval_s=10), scenario) is True


def test_a_session_handed_to_a_person_is_not_idled_out(tmp_path: Path) -> None:
    """Waiting for (or listening to) an operator is not idleness: the handoff has its own timeout."""
    async def scenario(h: InProcess) -> tuple[bool, bool]:
        await h.ingress(HandoffAsk(session_id=SID, principal="p1", gateway_id="gw0"))
        for phrase in h.to_worker("tts"):  # the handover phrase is said: no reply in progress
            await speak(h, phrase)
        session = h.orchestrator.sessions[SID]
        await asyncio.sleep(0.35)
        await h.orchestrator.tick()
        return session.turn is not None and session.turn.active, SID in h.orchestrator.sessions

    busy_and_alive = run(InProcess(tmp_path, session_idle_s=0.3, heartbeat_interval_s=10), scenario)
    assert busy_and_alive == (False, True)  # no reply in progress, and still live


def test_the_sessions_of_a_gateway_that_stopped_heartbeating_end_the_same_way(tmp_path: Path) -> None:
    """Ended at once (counted, history kept); the client is told only when that same gateway
    beats again (it had stalled: a frame sent while it is silent would be dropped)."""
    async def scenario(h: InProcess) -> dict[str, Any]:
        await whole_turn(h, 1, "hello", "Hi.")  # (well within 0.5 s, however busy the machine)
        before = ended("gateway_lost")
        await asyncio.sleep(0.8)  # gw0 silent past 0.25 s x 2 beats; gw1 keeps beating
        await h.ingress(GatewayHeartbeat(gateway_id="gw1", incarnation="i1"))
        await h.orchestrator.tick()
        out = {"at_reap": h.to_gateway(), "count": ended("gateway_lost") - before,
               "live": dict(h.orchestrator.sessions), "stored": await stored(h)}
        await h.ingress(GatewayHeartbeat(gateway_id="gw0", incarnation="i1"))  # back, same process
        out["back"] = h.to_gateway()
        await h.ingress(GatewayHeartbeat(gateway_id="gw0", incarnation="i1"))
        out["again"] = h.to_gateway()  # told once
        return out

    out = run(InProcess(tmp_path, session_idle_s=60, heartbeat_interval_s=0.25, heartbeat_liveness=2),
              scenario)
    assert isinstance(out, dict) and out["live"] == {} and out["count"] == 1
    assert not [e for e in out["at_reap"] if isinstance(e, ErrorEvent)]
    back = [e for e in out["back"] if isinstance(e, ErrorEvent)]
    assert [(e.session_id, e.code, e.fatal) for e in back] == [(SID, "gateway_lost", True)]
    assert not [e for e in out["again"] if isinstance(e, ErrorEvent)]
    reply = out["stored"]
    assert reply.session is not None and reply.session.end_reason == "gateway_lost"
    assert [m.content for m in reply.stored] == ["hello", "Hi."]


def test_a_gateway_back_as_a_new_process_is_not_told_of_the_old_ones_sessions(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> list[object]:
        await asyncio.sleep(0.25)
        await h.orchestrator.tick()
        h.to_gateway()
        await h.ingress(GatewayHeartbeat(gateway_id="gw0", incarnation="i2"))  # restarted meanwhile
        return [e for e in h.to_gateway() if isinstance(e, ErrorEvent)]

    assert run(InProcess(tmp_path, session_idle_s=60, heartbeat_interval_s=0.05, heartbeat_liveness=2),
               scenario) == []


async def silent_session(url: str, session_id: str) -> tuple[list[dict[str, Any]], int | None, float]:
    """Start a session, say one typed line, hear the reply, then stay silent until closed."""
    async with websockets.connect(url, open_timeout=WS_TIMEOUT_S, close_timeout=5) as ws:
        await ws.send(json.dumps({"type": "start", "codec": "pcm16", "sample_rate": 16000,
                                  "session_id": session_id}))
        assert json.loads(await ws.recv())["type"] == "session.started"
        await ws.send(json.dumps({"type": "text", "text": "Remember the word pineapple."}))
        events: list[dict[str, Any]] = []
        silent_from = time.monotonic()
        async with asyncio.timeout(WS_TIMEOUT_S):
            with contextlib.suppress(websockets.ConnectionClosed):
                async for message in ws:
                    if isinstance(message, str):
                        events.append(json.loads(message))
                        silent_from = time.monotonic()
        return events, ws.close_code, time.monotonic() - silent_from


@pytest.mark.e2e
def test_a_silent_client_is_closed_with_a_reason_and_its_history_kept(deterministic_stack: Stack) -> None:
    stack, chosen = deterministic_stack, str(uuid.uuid4())
    before = stack.metric("inzwa_sessions_ended_total", 'reason="idle_timeout"')
    events, close_code, silent_s = asyncio.run(silent_session(stack.url, chosen))
    types = [e["type"] for e in events]
    assert "tts.end" in types and types[-1] == "error", types
    assert events[-1]["code"] == "idle_timeout" and close_code == 1008, (events[-1], close_code)
    assert silent_s < 10  # the orchestrator's 2 s, not the gateway's own 120 s socket timeout
    assert stack.metric("inzwa_sessions_ended_total", 'reason="idle_timeout"') - before >= 1
    body = LOOPBACK.get(f"{stack.http}/v1/sessions/{chosen}", timeout=10).json()
    assert body["live"] is False and body["ended"] and body["end_reason"] == "idle_timeout", body
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"]
