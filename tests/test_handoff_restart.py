"""Handoff through an orchestrator SIGKILL, and the timeout with no operator, end to end on the
real processes with fake engines (a stack of its own: its orchestrator is killed, and its
handoff timeout is short). The client's `{"type":"handoff"}` and `POST /api/v1/handoff` start it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from common.languages import handoff as handoff_data
from tests.handoff_client import caller, operator
from tests.loopback import LOOPBACK
from tests.stack import Stack, fake_env, serving
from tests.test_sessions_api import kill_and_wait

TIMEOUT_S = 4  # INZWA_HANDOFF_TIMEOUT_S of this stack


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with serving(Stack(tmp_path_factory.mktemp("handoff-stack"), **fake_env(
            INZWA_HANDOFF_TIMEOUT_S=str(TIMEOUT_S), INZWA_FAKE_TTS_MS_PER_CHAR="10",
            INZWA_RESTART_BUDGET="20"))) as running:
        yield running


def stored(stack: Stack, client_id: str) -> dict[str, Any]:
    response = LOOPBACK.get(f"{stack.http}/v1/sessions/{client_id}", timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _ask_then_lose_the_orchestrator(stack: Stack, client_id: str) -> None:
    """Ask for a person (the client's message, then the REST call), and SIGKILL the
    orchestrator while the caller waits: the gateway closes the caller with 1012."""
    ws, talk = await caller(stack.url, client_id)
    try:
        await talk.send({"type": "handoff", "reason": "billing"})
        assert (await talk.event("handoff.started"))["reason"] == "client"
        async with httpx.AsyncClient(timeout=30) as http:
            again = await http.post(f"{stack.http}/api/v1/handoff",
                                    json={"session_id": client_id, "reason": "from the CRM"})
            assert again.status_code == 202 and again.json()["state"] == "requested", again.text
            unknown = await http.post(f"{stack.http}/api/v1/handoff",
                                      json={"session_id": str(uuid.uuid4()), "reason": "x"})
            assert unknown.status_code == 404, unknown.text
        await asyncio.to_thread(kill_and_wait, stack, "orchestrator")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(30):
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    finally:
        await ws.close()


async def _back_after_the_restart(stack: Stack, client_id: str) -> None:
    desk_ws, desk = await operator(stack.http)
    ws, talk = await caller(stack.url, client_id)
    try:
        assert (await talk.event("handoff.started"))["reason"] == "client"  # still handed over
        queued = await desk.until(lambda e: e["type"] == "handoff.requested")
        assert queued["handoff"]["triggers"][0]["evidence"] == "billing" and queued["handoff"]["live"]
        ended = await talk.event("handoff.ended", timeout_s=TIMEOUT_S + 20)  # nobody accepts
        assert ended["reason"] == "timeout"
        farewell = await talk.until(lambda e: e["type"] == "tts.end")
        assert farewell["text"] == handoff_data.get("en").phrases["timeout"]
        assert (await desk.until(lambda e: e["type"] == "handoff.ended"))["outcome"] == "timeout"
        await talk.send({"type": "text", "text": "what is the capital of zimbabwe"})
        reply = await talk.until(lambda e: e["type"] == "tts.end")
        assert reply["text"].startswith("You said what is the capital")  # the assistant goes on
    finally:
        await ws.close()
        await desk_ws.close()


def test_handoff_survives_an_orchestrator_sigkill_and_times_out_without_an_operator(own_stack: Stack) -> None:
    client_id = str(uuid.uuid4())
    asyncio.run(_ask_then_lose_the_orchestrator(own_stack, client_id))
    [handoff] = stored(own_stack, client_id)["handoffs"]
    assert (handoff["state"], handoff["reason"]) == ("requested", "client")
    asyncio.run(_back_after_the_restart(own_stack, client_id))
    [handoff] = stored(own_stack, client_id)["handoffs"]
    assert (handoff["state"], handoff["outcome"]) == ("ended", "timeout")
