"""Sessions sharded over orchestrators (gateway/shards.py): the rendezvous hash and the routing.

The hash must be the same in every gateway and every run (never Python's salted hash()), spread
ids evenly, and move as few ids as possible when a shard comes or goes: those are what let
several gateways agree with no shared state and a resume land where its conversation is stored.
The two-shard stack itself (real processes, an orchestrator killed) is tests/test_shards_stack.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest
from pydantic import ValidationError

from common.frames import (
    ChatJob,
    Frame,
    HistoryReply,
    HistoryRequest,
    JobCancel,
    SessionEnd,
    SessionList,
    SessionListReply,
    SessionSummary,
    StackStatus,
    TextIn,
)
from common.settings import Settings
from gateway.shards import Shard, Shards, find_on_shards, list_all_shards, owner, rank
from tests.stack import ROOT

KEYS = [str(uuid.UUID(int=i * 7919 + 1)) for i in range(4000)]
THREE = ["s0", "s1", "s2"]


def _settings(*names: str) -> Settings:
    shards = [{"name": n, "ingress": f"tcp://127.0.0.1:{5550 + 10 * i}",
               "control": f"tcp://127.0.0.1:{5551 + 10 * i}"} for i, n in enumerate(names)]
    return Settings(_env_file=None, shards=shards)  # type: ignore[call-arg]


def test_the_owner_is_the_same_in_every_process_and_for_any_order_of_the_list() -> None:
    mine = [owner(key, THREE) for key in KEYS[:50]]
    assert mine == [owner(key, list(reversed(THREE))) for key in KEYS[:50]]
    script = ("import sys, uuid; from gateway.shards import owner; "
              "print(' '.join(owner(str(uuid.UUID(int=i * 7919 + 1)), ['s0', 's1', 's2']) "
              "for i in range(50)))")
    for seed in ("1", "2"):  # Python's own hash() differs between these two; ours must not
        out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}, timeout=60, check=True)
        assert out.stdout.split() == mine


def test_ids_spread_evenly() -> None:
    counts = Counter(owner(key, THREE) for key in KEYS)
    assert set(counts) == set(THREE)
    for name in THREE:  # 1333 expected each; binomial sd ~30
        assert 1150 < counts[name] < 1520, counts


def test_adding_a_shard_moves_only_the_ids_it_takes_about_one_in_n() -> None:
    before = {key: owner(key, THREE) for key in KEYS}
    after = {key: owner(key, [*THREE, "s3"]) for key in KEYS}
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == "s3" for key in moved)  # nothing moves between the old shards
    assert 0.20 < len(moved) / len(KEYS) < 0.30  # 1/4 expected


def test_removing_a_shard_moves_only_its_own_ids_to_their_second_choice() -> None:
    before = {key: owner(key, THREE) for key in KEYS}
    after = {key: owner(key, ["s0", "s2"]) for key in KEYS}
    for key in KEYS:
        if before[key] != "s1":
            assert after[key] == before[key]
        else:
            assert after[key] == rank(key, THREE)[1]


def test_shard_settings_are_read_as_json_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INZWA_SHARDS", '[{"name": "a", "ingress": "ipc:///r/a/ingress.sock", '
                       '"control": "ipc:///r/a/control.sock"}]')
    assert Settings(_env_file=None).shards[0]["control"] == "ipc:///r/a/control.sock"  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="needs a name"):
        Settings(_env_file=None, shards=[{"name": "a", "ingress": "tcp://h:1"}])  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="same name"):
        _settings("a", "a")


def _up(shards: Shards, name: str, ready: int = 1) -> None:
    shard = shards.all[name]
    shard.status = StackStatus(ready={"asr": ready, "llm": ready, "tts": ready}, incarnation="i")
    shard.status_at = time.monotonic()


def test_a_resumable_session_stays_with_its_owner_a_fresh_one_goes_to_a_ready_shard() -> None:
    shards = Shards(_settings(*THREE))
    key = KEYS[0]
    first, second = rank(key, THREE)[:2]
    for name in THREE:
        _up(shards, name)
    assert shards.choose(key, sticky=True).name == first
    assert shards.choose(key, sticky=False).name == first
    _up(shards, first, ready=0)  # its owner lost its workers
    assert shards.choose(key, sticky=True).name == first  # its stored conversation is there
    assert shards.choose(key, sticky=False).name == second


def test_frames_follow_their_session_and_a_job_its_placement() -> None:
    shards = Shards(_settings(*THREE))
    for name in THREE:
        _up(shards, name)
    key = KEYS[1]
    _up(shards, owner(key, THREE), ready=0)
    placed = shards.place(key, sticky=False)
    assert placed.name != owner(key, THREE)
    assert shards.route(TextIn(session_id=key)) is placed
    assert shards.route(SessionEnd(session_id=key)) is placed  # the last frame: forgotten
    assert key not in shards.placed
    job = shards.route(ChatJob(session_id="job-1"))
    assert shards.route(JobCancel(session_id="job-1")) is job
    shards.forget("job-1")
    assert not shards.placed
    assert shards.alive(shards.route(SessionList()))  # no session: any live shard


def test_one_shard_is_the_configured_endpoints_with_no_bookkeeping() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    shards = Shards(settings)
    assert shards.single and shards.first.ingress == settings.ingress
    assert shards.first.control == settings.control
    assert shards.place("any", sticky=True) is shards.first
    assert shards.route(SessionEnd(session_id="any")) is shards.first
    assert not shards.placed


def _listing(shards: Shards, stores: dict[str, list[SessionSummary]], offset: int = 0,
             limit: int = 3) -> SessionListReply | None:
    """list_all_shards over shards whose stores hold `stores` (answered as a store would)."""
    async def ask(request: Frame, _timeout: float | None, shard: Shard) -> SessionListReply:
        assert isinstance(request, SessionList) and request.offset == 0
        rows = sorted(stores[shard.name], key=lambda s: s.last_active, reverse=True)
        return SessionListReply(sessions=rows[:request.limit], total=len(rows))
    return asyncio.run(list_all_shards(shards, ask, "p", admin=False, limit=limit, offset=offset))


def test_the_session_listing_merges_every_shards_store_newest_first() -> None:
    shards = Shards(_settings("a", "b"))
    _up(shards, "a")
    _up(shards, "b")
    rows = {name: [SessionSummary(session_id=f"{name}{i}", last_active=float(t))
                   for i, t in enumerate(times)] for name, times in (("a", [5, 1, 3]), ("b", [4, 2]))}
    page = _listing(shards, rows, offset=1, limit=3)
    assert page is not None and page.total == 5
    assert [s.session_id for s in page.sessions] == ["b0", "a2", "b1"]  # 4, 3, 2 after the 5
    shared = _listing(shards, {"a": rows["a"], "b": rows["a"]})  # one PostgreSQL for both
    assert shared is not None and shared.total == 3
    assert [s.session_id for s in shared.sessions] == ["a0", "a2", "a1"]
    shards.all["b"].status_at = 0.0  # a silent shard is not asked; the others still answer
    assert [s.session_id for s in _listing(shards, rows).sessions] == ["a0", "a2", "a1"]  # type: ignore[union-attr]


def _find(shards: Shards, held_by: dict[str, bool], key: str) -> HistoryReply | None:
    """find_on_shards over shards whose stores hold `key` or not (answered as a store would)."""
    async def ask(request: Frame, _timeout: float | None, shard: Shard) -> HistoryReply | None:
        if not shards.alive(shard):
            return None  # as Bridge.send drops a frame for a silent shard
        return HistoryReply(session_id=key, found=held_by[shard.name])
    request = HistoryRequest(session_id=key)
    reply = asyncio.run(find_on_shards(shards, ask, request,
                                       lambda r: isinstance(r, HistoryReply) and r.found))
    assert reply is None or isinstance(reply, HistoryReply)
    return reply


def test_a_stored_session_is_found_on_its_owner_or_where_it_was_placed() -> None:
    shards = Shards(_settings(*THREE))
    for name in THREE:
        _up(shards, name)
    key = KEYS[2]
    first, second, third = rank(key, THREE)
    # placed on its second choice while its owner was not ready; the session has ended since
    found = _find(shards, {first: False, second: True, third: False}, key)
    assert found is not None and found.found
    nowhere = _find(shards, dict.fromkeys(THREE, False), key)
    assert nowhere is not None and not nowhere.found  # every store said so: a 404
    shards.all[first].status_at = 0.0  # the owner is down: its store cannot vouch
    assert _find(shards, dict.fromkeys(THREE, False), key) is None  # a 503, never a 404
