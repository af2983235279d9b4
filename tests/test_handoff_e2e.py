"""A caller gets a person and back, end to end on the real five processes with fake engines
(the shared `fake_stack`): the typed "I want to talk to a person" starts the handoff, an
operator socket accepts, hears the caller's next words, speaks to the caller (TTS audio) and
releases; the assistant's next turn has the operator's turns in its history (handoff area)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import websockets

from common.languages import registry as languages
from tests.gateway_thread import running_gateway
from tests.handoff_client import Peer, caller, operator
from tests.loopback import LOOPBACK
from tests.stack import Stack

OPERATOR_SAYS = "I have blocked your card and sent a new one"


async def _accept(desk: Peer, talk: Peer) -> str:
    requested = await desk.event("handoff.requested")
    session = requested["session_id"]
    assert requested["handoff"]["reason"] == "explicit" and requested["handoff"]["live"]
    await talk.until(lambda e: e["type"] == "tts.end")  # the handover phrase, spoken
    assert talk.events[-1]["text"] == languages.get("en").fallback("handover") and talk.audio_bytes > 0
    await desk.send({"type": "accept", "session_id": session})
    accepted = await desk.event("handoff.accepted")
    history = [m["content"] for m in accepted["handoff"]["history"]]
    assert "I want to talk to a person" in history
    await talk.event("handoff.accepted")
    return str(session)


async def _operator_talks(desk: Peer, talk: Peer, session: str) -> None:
    await talk.send({"type": "text", "text": "my card was stolen"})
    heard = await desk.event("transcript")
    assert (heard["session_id"], heard["text"]) == (session, "my card was stolen")
    audio_before = talk.audio_bytes
    await desk.send({"type": "say", "session_id": session, "text": OPERATOR_SAYS})
    said = await talk.until(lambda e: e["type"] == "tts.end")
    assert said["text"] == OPERATOR_SAYS and talk.audio_bytes > audio_before  # heard as speech
    spoken = {e["token"] for e in talk.events if e["type"] == "llm.partial"}  # (said turns show as text)
    assert spoken == {languages.get("en").fallback("handover"), OPERATOR_SAYS}  # no assistant reply
    await desk.send({"type": "release", "session_id": session})
    assert (await talk.event("handoff.ended"))["reason"] == "released"
    assert (await desk.event("handoff.ended"))["outcome"] == "released"


async def _conversation(stack: Stack, client_id: str) -> None:
    desk_ws, desk = await operator(stack.http)
    talk_ws, talk = await caller(stack.url, client_id)
    try:
        await talk.send({"type": "text", "text": "I want to talk to a person"})
        await talk.event("handoff.started")
        session = await _accept(desk, talk)
        await _operator_talks(desk, talk, session)
        await talk.send({"type": "text", "text": "thank you"})
        reply = await talk.until(lambda e: e["type"] == "tts.end")
        assert reply["text"].startswith("You said thank you")  # the assistant is back
    finally:
        await talk_ws.close()
        await desk_ws.close()


def test_a_caller_gets_a_person_and_back_with_nothing_lost(fake_stack: Stack) -> None:
    client_id = str(uuid.uuid4())
    asyncio.run(_conversation(fake_stack, client_id))
    body: dict[str, Any] = LOOPBACK.get(f"{fake_stack.http}/v1/sessions/{client_id}", timeout=30).json()
    history = [(m["role"], m["content"]) for m in body["history"]]
    at = history.index(("assistant", OPERATOR_SAYS))  # the operator's turn, in the prompt history
    assert history[at - 1] == ("user", "my card was stolen")
    assert history[at + 1][0] == "user" and history[at + 1][1] == "thank you"
    [handoff] = body["handoffs"]
    assert (handoff["state"], handoff["outcome"], handoff["reason"]) == ("ended", "released", "explicit")
    assert handoff["operator"] == "anonymous-local" and len(handoff["turns"]) == 1
    stored = {(m["turn_id"], m["role"]): m["content"] for m in body["messages"]}
    assert stored[(handoff["turns"][0], "assistant")] == OPERATOR_SAYS


USER_KEY, OPERATOR_KEY = "handoff-user-key-0123456789", "handoff-operator-key-0123456789"


async def _operator_sockets(http_url: str) -> None:
    url = http_url.replace("http://", "ws://") + "/v1/operator"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {USER_KEY}"},
                                  open_timeout=30, close_timeout=5) as ws:
        refused = json.loads(await ws.recv())  # a caller's key is no operator's
        assert refused["code"] == "operator_required", refused
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    async with websockets.connect(url, open_timeout=30, close_timeout=5) as ws:  # token in a hello
        await ws.send(json.dumps({"type": "hello", "auth_token": OPERATOR_KEY}))
        assert json.loads(await ws.recv())["type"] == "handoff.queue"
        await ws.send(json.dumps({"type": "accept"}))
        assert json.loads(await ws.recv())["code"] == "bad_message"  # no session_id: an error, still open
        await ws.send(json.dumps({"type": "accept", "session_id": str(uuid.uuid4())}))
        assert json.loads(await ws.recv())["code"] == "no_such_handoff"


def test_the_operator_socket_needs_an_operator_credential(fake_stack: Stack) -> None:
    with running_gateway(fake_stack, api_keys=[USER_KEY], operator_api_keys=[OPERATOR_KEY]) as gateway:
        asyncio.run(_operator_sockets(f"http://127.0.0.1:{gateway.port}"))
