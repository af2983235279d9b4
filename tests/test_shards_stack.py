"""Two shards on one machine: two orchestrators with their own workers, one gateway (real
processes, fake engines, the plane TCP with CURVE; tests/shards.py). Sessions spread over both
shards by their id; kill -9 of one orchestrator ends only its own sessions (1012) while the other
shard's sessions go on talking; once the killed orchestrator is back, its sessions resume from
its own store."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
import websockets

from gateway.auth import ANONYMOUS_ID
from gateway.bridge import scoped_session_id
from gateway.shards import owner
from tests.loopback import LOOPBACK
from tests.shards import TwoShards
from tests.stack import fake_env, serving

pytestmark = pytest.mark.e2e

NAMES = ["a", "b"]
PER_SHARD = 2
TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory):
    # TCP with CURVE, as shards on several hosts would be (ipc works the same way on one box)
    with serving(TwoShards(tmp_path_factory.mktemp("shards"), tmp_path_factory.mktemp("keys"),
                           **fake_env(INZWA_RESTART_BUDGET="20",
                                      INZWA_FAKE_LLM_REPLY="Harare is the capital."))) as running:
        yield running


def _internal(client_id: str) -> str:
    return scoped_session_id(ANONYMOUS_ID, client_id)  # every test client is the local anonymous one


def client_ids() -> dict[str, list[str]]:
    """Client-chosen session ids, PER_SHARD of them owned by each shard."""
    ids: dict[str, list[str]] = {name: [] for name in NAMES}
    for index in range(200):
        client_id = str(uuid.UUID(int=0x5AD0 << 64 | index))  # client-chosen ids are UUIDs
        name = owner(_internal(client_id), NAMES)
        if len(ids[name]) < PER_SHARD:
            ids[name].append(client_id)
    assert all(len(found) == PER_SHARD for found in ids.values())
    return ids


def stored_ids(store: Path) -> set[str]:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT id FROM sessions")}


async def open_session(url: str, client_id: str) -> Any:
    ws = await websockets.connect(url)
    await ws.send(json.dumps({"type": "start", "codec": "pcm16", "sample_rate": 16000,
                              "session_id": client_id}))
    event = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
    assert event["type"] == "session.started", event
    return ws


async def turn(ws: Any, text: str = "what is the capital of zimbabwe") -> list[dict[str, Any]]:
    """A typed turn, to the end of the spoken reply."""
    await ws.send(json.dumps({"type": "text", "text": text}))
    events: list[dict[str, Any]] = []
    while not events or events[-1]["type"] != "tts.end":
        message = await asyncio.wait_for(ws.recv(), TIMEOUT_S)
        if isinstance(message, str):
            events.append(json.loads(message))
            assert events[-1]["type"] != "error", events[-1]
    return events


async def ending(ws: Any) -> tuple[list[dict[str, Any]], int | None]:
    """Everything a session says until the server closes it, and the close code."""
    events: list[dict[str, Any]] = []
    try:
        for _ in range(1000):
            message = await asyncio.wait_for(ws.recv(), TIMEOUT_S)
            if isinstance(message, str):
                events.append(json.loads(message))
    except websockets.ConnectionClosed:
        pass
    return events, ws.close_code


async def kill_one_shard(shards: TwoShards, sessions: dict[str, list[Any]]) -> None:
    """kill -9 of shard a's orchestrator: its sessions end with 1012, b's go on talking."""
    os.kill(shards.a.pids()["orchestrator"], signal.SIGKILL)
    ended = await asyncio.gather(*(ending(ws) for ws in sessions["a"]))
    for events, code in ended:
        assert code == 1012, (code, events)
        assert events and events[-1]["code"] == "orchestrator_unavailable", events
    for ws in sessions["b"]:  # after a's sessions are gone: b's still answer, and stay open
        events = await turn(ws, "and the capital of zambia")
        assert any(e["type"] == "llm.partial" for e in events), events
        assert ws.close_code is None


def check_spread(shards: TwoShards, ids: dict[str, list[str]]) -> None:
    """Each session is in its own shard's store, and only there."""
    for name in NAMES:
        other = NAMES[1 - NAMES.index(name)]
        assert {_internal(c) for c in ids[name]} <= stored_ids(shards.store(name))
        assert not {_internal(c) for c in ids[name]} & stored_ids(shards.store(other))


def check_rest(shards: TwoShards) -> None:
    """REST on a sharded gateway: the models of both shards (one instance of each kind per
    shard, merged), and chat jobs answered by whichever shard takes them."""
    body = LOOPBACK.get(f"{shards.a.http}/v1/models", timeout=10).json()
    instances = {m["role"]: len(m["instances"]) for m in body["models"]}
    assert instances == {"asr": 2, "llm": 2, "tts": 2}, body
    for _ in range(2):
        reply = LOOPBACK.post(f"{shards.a.http}/v1/chat", timeout=30, json={
            "messages": [{"role": "user", "content": "What is the capital of Zimbabwe?"}]})
        assert reply.status_code == 200, reply.text


def check_resumed(shards: TwoShards, ids: dict[str, list[str]]) -> None:
    """supervisord restarted the killed orchestrator; a client reconnecting with its session id
    lands on the same shard and finds its conversation there (the turn before the kill)."""
    shards.wait_shards_ready(60)
    client_id = ids["a"][0]

    async def resume() -> None:
        ws = await open_session(shards.url, client_id)
        try:
            await turn(ws, "and of kenya")
        finally:
            await ws.close()

    asyncio.run(resume())
    body = LOOPBACK.get(f"{shards.a.http}/v1/sessions/{client_id}", timeout=10).json()
    assert body["turns"] >= 2, body  # the stored turn from before the kill, and this one
    listing = LOOPBACK.get(f"{shards.a.http}/v1/sessions?limit=100", timeout=10).json()
    listed = {s["session_id"] for s in listing["sessions"]}
    assert {_internal(c) for name in NAMES for c in ids[name]} <= listed  # from both stores


def test_sessions_spread_over_both_shards_a_killed_orchestrator_ends_only_its_own_and_resumes(
        shards: TwoShards) -> None:
    ids = client_ids()

    async def spread_and_kill() -> None:
        sessions = {name: [await open_session(shards.url, c) for c in ids[name]] for name in NAMES}
        try:
            await asyncio.gather(*(turn(ws) for name in NAMES for ws in sessions[name]))
            check_spread(shards, ids)
            check_rest(shards)
            await kill_one_shard(shards, sessions)
        finally:
            for ws in [*sessions["a"], *sessions["b"]]:
                await ws.close()

    asyncio.run(spread_and_kill())
    check_resumed(shards, ids)
