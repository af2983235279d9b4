"""Conversations that survive, end to end on the real five processes (a stack of their own: its
orchestrator and gateway are SIGKILLed). The fake engines stand in for the models, which are
not under test here: what is, is the store, the resume, the sessions API and their scoping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from gateway.client import load_clip
from tests.gateway_thread import running_gateway
from tests.loopback import LOOPBACK
from tests.stack import FAKE_ENGINES, UNLIMITED, Stack, serving

pytestmark = pytest.mark.e2e

WS_TIMEOUT_S = 30
TURN_TIMEOUT_S = 60
FRAME_BYTES = 640  # 20 ms of PCM16 mono at 16 kHz
SPOKEN = "remember the word pineapple"  # what the fake ASR hears in any speech
CLIP = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "speech" / "q_en_capital.wav"


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with serving(Stack(tmp_path_factory.mktemp("sessions-stack"), **FAKE_ENGINES,
                       INZWA_FAKE_TTS_MS_PER_CHAR="10", INZWA_LOG_CONTENT="true",
                       INZWA_FAKE_ASR_TEXT=SPOKEN, INZWA_RESTART_BUDGET="20", **UNLIMITED)) as running:
        yield running


async def say(ws: Any, turn: str | bytes) -> None:
    """A typed turn (text), or a spoken one: the clip's PCM in 20 ms frames at real time, then
    end_turn."""
    if isinstance(turn, str):
        await ws.send(json.dumps({"type": "text", "text": turn}))
        return
    for offset in range(0, len(turn), FRAME_BYTES):
        await ws.send(turn[offset:offset + FRAME_BYTES])
        await asyncio.sleep(0.02)
    await ws.send(json.dumps({"type": "end_turn"}))


async def typed_turns(url: str, session_id: str, texts: list[str | bytes], token: str = "") -> list[str]:
    """Open (or resume) `session_id`, say each turn (typed text or spoken PCM) and wait for its
    whole spoken reply; the replies' texts (tts.end)."""
    replies = []
    async with websockets.connect(url, open_timeout=WS_TIMEOUT_S, close_timeout=5) as ws:
        start: dict[str, Any] = {"type": "start", "codec": "pcm16", "sample_rate": 16000,
                                 "session_id": session_id}
        if token:
            start["auth_token"] = token
        await ws.send(json.dumps(start))
        started = json.loads(await ws.recv())
        assert started["type"] == "session.started", started
        for text in texts:
            await say(ws, text)
            async with asyncio.timeout(TURN_TIMEOUT_S):
                while True:
                    message = await ws.recv()
                    if isinstance(message, str):
                        event = json.loads(message)
                        assert event["type"] != "error", event
                        if event["type"] == "tts.end":
                            replies.append(event.get("text", ""))
                            break
    return replies


def kill_and_wait(stack: Stack, program: str, timeout_s: float = 90) -> None:
    """SIGKILL `program` and wait until supervisord has it running again and the stack is ready."""
    old = stack.pids()[program]
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = stack.pids().get(program)
        if pid and pid != old and stack.ready():
            time.sleep(1.0)  # the gateway hears the new orchestrator's incarnation
            if stack.ready():
                return
        time.sleep(0.3)
    raise TimeoutError(f"{program} not back after {timeout_s} s:\n{stack.logs()}")


def prompts(stack: Stack, turn_id: int) -> list[str]:
    """The orchestrator's logged prompts of `turn_id` (content logging is on in this stack)."""
    lines = (stack.run_dir / "orchestrator.log").read_text(errors="replace").splitlines()
    found = []
    for line in lines:
        if '"turn started"' in line:
            entry = json.loads(line)
            if entry.get("turn_id") == turn_id:
                found.append(entry["prompt"])
    return found


def test_a_conversation_survives_orchestrator_and_gateway_kills(own_stack: Stack) -> None:
    chosen = str(uuid.uuid4())  # turn 1 spoken (a fixture clip), turn 2 typed
    first = asyncio.run(typed_turns(own_stack.url, chosen, [load_clip(CLIP), "My name is Tariro."]))
    assert len(first) == 2
    kill_and_wait(own_stack, "orchestrator")
    asyncio.run(typed_turns(own_stack.url, chosen, ["What did I tell you?"]))
    [third_prompt] = prompts(own_stack, 3)
    assert "pineapple" in third_prompt and "Tariro" in third_prompt, third_prompt
    assert third_prompt.index("pineapple") < third_prompt.index("Tariro") < third_prompt.index("What did I")

    body = LOOPBACK.get(f"{own_stack.http}/v1/sessions/{chosen}", timeout=10).json()
    messages = body["messages"]
    assert [(m["turn_id"], m["role"]) for m in messages] == [
        (t, role) for t in (1, 2, 3) for role in ("user", "assistant")]
    assert [m["content"] for m in messages if m["role"] == "user"] == [
        SPOKEN, "My name is Tariro.", "What did I tell you?"]
    assert messages[0]["confidence"] is not None  # the ASR's, for the spoken turn
    for reply in (m for m in messages if m["role"] == "assistant"):
        assert reply["content"] and reply["heard"] is None
        timings = reply["timings"]
        assert 0 < timings["first_token"] <= timings["first_audio"] <= timings["tts_end"]
        assert {model["kind"] for model in reply["models"]} == {"asr", "llm", "tts"}
    assert body["live"] is False and body["ended"] and body["messages_total"] == 6

    kill_and_wait(own_stack, "gateway")  # the gateway this time: its sessions end, the store stays
    asyncio.run(typed_turns(own_stack.url, chosen, ["And my name?"]))
    [fourth_prompt] = prompts(own_stack, 4)
    assert "Tariro" in fourth_prompt and "What did I tell you?" in fourth_prompt
    listing = LOOPBACK.get(f"{own_stack.http}/v1/sessions", timeout=10).json()
    [mine] = [s for s in listing["sessions"] if s["session_id"] == body["store_id"]]
    assert mine["turns"] == 4


def test_sessions_are_listed_read_resumed_and_erased_only_by_their_owner(own_stack: Stack) -> None:
    alice, bob = "alice-key-0123456789", "bob-key-0123456789"
    with running_gateway(own_stack, api_keys=[alice, bob]) as gateway:
        chosen = str(uuid.uuid4())
        asyncio.run(typed_turns(gateway.url, chosen, ["Remember the word pineapple."], alice))

        def call(method: str, path: str, key: str) -> httpx.Response:
            return LOOPBACK.request(method, f"{gateway.http}{path}", timeout=10,
                                 headers={"Authorization": f"Bearer {key}"})

        owner = call("GET", f"/v1/sessions/{chosen}", alice)
        assert owner.status_code == 200, owner.text
        store_id = owner.json()["store_id"]
        listing = call("GET", "/v1/sessions?limit=5", alice).json()
        assert [s["session_id"] for s in listing["sessions"]] == [store_id] and listing["total"] == 1

        for path in (f"/v1/sessions/{chosen}", f"/v1/sessions/{store_id}"):  # bob: as if none
            assert call("GET", path, bob).status_code == 404
            assert call("DELETE", path, bob).status_code == 404
        assert call("GET", "/v1/sessions", bob).json() == {"sessions": [], "total": 0,
                                                            "limit": 20, "offset": 0}
        # bob starting alice's ids gets a session of his own: nothing of hers in it
        asyncio.run(typed_turns(gateway.url, store_id, ["Hello there."], bob))
        bobs = call("GET", f"/v1/sessions/{store_id}", bob).json()
        assert "pineapple" not in json.dumps(bobs) and bobs["store_id"] != store_id
        assert "pineapple" in call("GET", f"/v1/sessions/{chosen}", alice).text  # hers untouched

        assert call("DELETE", f"/v1/sessions/{chosen}", alice).status_code == 204
        assert call("GET", f"/v1/sessions/{chosen}", alice).status_code == 404
        assert call("DELETE", f"/v1/sessions/{chosen}", alice).status_code == 404
        assert call("GET", "/v1/sessions", alice).json()["total"] == 0


def test_a_reply_interrupted_by_a_new_message_is_stored_as_heard(own_stack: Stack) -> None:
    chosen = str(uuid.uuid4())

    async def talk() -> None:
        async with websockets.connect(own_stack.url, open_timeout=WS_TIMEOUT_S, close_timeout=5) as ws:
            await ws.send(json.dumps({"type": "start", "codec": "pcm16", "sample_rate": 16000,
                                      "session_id": chosen}))
            assert json.loads(await ws.recv())["type"] == "session.started"
            # (the fake LLM echoes it: a short first sentence, then a long one to interrupt)
            story = "Hi. " + "Tell me a long story about the river and the hills and the rain " * 3
            await ws.send(json.dumps({"type": "text", "text": story}))
            events: list[str] = []
            async with asyncio.timeout(TURN_TIMEOUT_S):
                while "tts.end" not in events:  # (the interrupted turn has none: the new one's)
                    message = await ws.recv()
                    if not isinstance(message, str):
                        continue
                    events.append(json.loads(message)["type"])
                    if events[-1] == "tts.start" and events.count("tts.start") == 1:
                        await asyncio.sleep(0.8)  # some of the reply has played: barge in
                        await ws.send(json.dumps({"type": "text", "text": "Stop."}))
            assert events.index("tts.cancel") < events.index("tts.end"), events

    asyncio.run(talk())
    body = LOOPBACK.get(f"{own_stack.http}/v1/sessions/{chosen}", timeout=10).json()
    first = [m for m in body["messages"] if m["turn_id"] == 1 and m["role"] == "assistant"]
    assert len(first) == 1 and first[0]["heard"] is not None, body["messages"]
    generated, heard = first[0]["content"], first[0]["heard"]
    assert generated.startswith(heard) and len(heard) < len(generated), (generated, heard)
    if heard:  # what the next prompt remembers of it
        assert body["history"][1] == {"role": "assistant", "content": heard}, body["history"]


def test_erasing_a_live_session_closes_its_client_with_the_reason(own_stack: Stack) -> None:
    """The orchestrator's fatal error reaches the client as an error event and a close code,
    not as a socket left open to a session that no longer exists."""
    chosen = str(uuid.uuid4())

    async def talk() -> tuple[list[dict[str, Any]], int | None]:
        async with websockets.connect(own_stack.url, open_timeout=WS_TIMEOUT_S, close_timeout=5) as ws:
            await ws.send(json.dumps({"type": "start", "codec": "pcm16", "sample_rate": 16000,
                                      "session_id": chosen}))
            assert json.loads(await ws.recv())["type"] == "session.started"
            erased = await asyncio.to_thread(httpx.delete, f"{own_stack.http}/v1/sessions/{chosen}",
                                             timeout=10)
            assert erased.status_code == 204, erased.text
            events = []
            async with asyncio.timeout(TURN_TIMEOUT_S):
                with contextlib.suppress(websockets.ConnectionClosed):  # closed with a reason
                    async for message in ws:
                        if isinstance(message, str):
                            events.append(json.loads(message))
            return events, ws.close_code

    events, close_code = asyncio.run(talk())
    assert [e["code"] for e in events if e["type"] == "error"] == ["session_deleted"], events
    assert close_code == 1008


async def stall_gateway_during(url: str, session_id: str, pid: int, stall_s: float
                               ) -> tuple[list[dict[str, Any]], int | None]:
    """One turn, then the gateway stops (SIGSTOP) for `stall_s` and resumes; what the client got
    after that, and its close code."""
    async with websockets.connect(url, open_timeout=WS_TIMEOUT_S, close_timeout=5) as ws:
        await ws.send(json.dumps({"type": "start", "codec": "pcm16", "sample_rate": 16000,
                                  "session_id": session_id}))
        assert json.loads(await ws.recv())["type"] == "session.started"
        await say(ws, "Remember the word pineapple.")  # its reply proves the orchestrator holds it
        async with asyncio.timeout(TURN_TIMEOUT_S):
            while not (isinstance(m := await ws.recv(), str) and json.loads(m)["type"] == "tts.end"):
                pass
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(stall_s)
        finally:
            os.kill(pid, signal.SIGCONT)
        events = []
        async with asyncio.timeout(TURN_TIMEOUT_S):
            with contextlib.suppress(websockets.ConnectionClosed):
                async for message in ws:
                    if isinstance(message, str):
                        events.append(json.loads(message))
        return events, ws.close_code


def test_the_sessions_of_a_gateway_that_stopped_heartbeating_end_and_keep_their_history(
        own_stack: Stack) -> None:
    """A gateway silent past its liveness (5 s) has its sessions ended (gateway_lost, counted,
    history kept); one that was only stalled closes its client with a reason when it resumes."""
    chosen, pid = str(uuid.uuid4()), own_stack.pids()["gateway"]

    def lost() -> float:
        text = LOOPBACK.get(f"{own_stack.http}/metrics", headers=own_stack.admin_headers(), timeout=10).text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("inzwa_sessions_ended_total{") and 'reason="gateway_lost"' in line)

    before = lost()
    events, close_code = asyncio.run(stall_gateway_during(own_stack.url, chosen, pid, stall_s=7.5))
    # Told by the orchestrator when the gateway beats again (gateway_lost, 1008), or first by the
    # gateway itself, which on waking finds the orchestrator's status stale (1012): either way
    # the client is closed with a reason, not left on a session nobody serves.
    errors = [(e["code"], close_code) for e in events if e["type"] == "error"]
    assert errors in ([("gateway_lost", 1008)], [("orchestrator_unavailable", 1012)]), (events, close_code)
    assert lost() - before >= 1
    body = LOOPBACK.get(f"{own_stack.http}/v1/sessions/{chosen}", timeout=10).json()
    assert body["end_reason"] == "gateway_lost" and body["live"] is False, body
    assert [m["content"] for m in body["messages"] if m["role"] == "user"] == ["Remember the word pineapple."]
