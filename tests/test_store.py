"""The conversation store on a temp SQLite file, and the orchestrator's use of it in-process.

Store tests call orchestrator/store_sqlite.py directly; orchestrator tests drive the real
Orchestrator through tests/harness.py (frames in, frames out) with the store on a temp run dir,
and a second Orchestrator on the same run dir plays the restarted process.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from common.frames import (
    ErrorEvent,
    GatewayHeartbeat,
    HistoryReply,
    HistoryRequest,
    PlaybackMark,
    SessionDelete,
    SessionDeleted,
    SessionEnd,
    SessionList,
    SessionListReply,
    SessionStart,
    TextIn,
    TurnEvent,
    VadEvent,
)
from orchestrator.store import SessionRecord, StoreError, TurnModel, TurnRecord
from orchestrator.store_sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteStore, migrate
from tests.harness import SID, InProcess
from tests.test_orchestrator import llm_tokens
from tests.test_turns_inprocess import final, speak, tokens


def arun(coro: Awaitable[object]) -> object:
    async def main() -> object:
        return await coro

    return asyncio.run(main())


def store_at(path: Path, **options: object) -> SqliteStore:
    return SqliteStore(path, busy_timeout_s=0.2, **options)  # type: ignore[arg-type]


async def one_turn(store: SqliteStore, session_id: str = "s1", principal: str = "alice",
                   turn_id: int = 1, user: str = "Remember pineapple.", reply: str = "I will.",
                   last_active: float | None = None) -> None:
    now = time.time() if last_active is None else last_active
    await store.start_session(SessionRecord(session_id, principal, "en", created=now, last_active=now))
    await store.record_turn(TurnRecord(session_id, turn_id, user, reply, language="en",
                                       confidence=0.9, timings={"first_token": 120.0},
                                       models=[TurnModel("llm", "qwen", "1", "ab" * 32)]))
    if last_active is not None:  # (a turn marks its session active now: set the past back)
        with sqlite3.connect(store.path) as db:
            db.execute("UPDATE sessions SET last_active = ? WHERE id = ?", (last_active, session_id))


# --- the store itself -----------------------------------------------------------------------------


def test_a_new_file_is_migrated_to_the_current_schema_in_wal_mode(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = store_at(tmp_path / "new.db")
        await store.open()
        await one_turn(store)
        await store.close()

    arun(scenario())
    db = sqlite3.connect(tmp_path / "new.db")
    assert db.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"sessions", "messages", "turn_models", "schema_version"} <= tables


def test_a_file_of_the_previous_schema_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path, isolation_level=None)
    assert migrate(db, target=1) == 1
    db.execute("INSERT INTO sessions VALUES ('old', 'alice', 'en', '', 1.0, ?, NULL, '')", (time.time(),))
    db.execute("INSERT INTO messages (session_id, turn_id, role, text, language, confidence, created) "
               "VALUES ('old', 1, 'user', 'from version one', 'en', 0.8, 1.0)")
    db.close()

    async def scenario() -> object:
        store = store_at(path)
        try:
            return await store.get_session("old"), await store.messages("old")
        finally:
            await store.close()

    record, messages = arun(scenario())  # type: ignore[misc]
    assert record.principal == "alice" and record.ended is not None  # a run left it open: ended
    assert record.end_reason == "orchestrator_restarted" and record.turns == 1
    assert [(m.role, m.text, m.heard, m.timings) for m in messages] == [
        ("user", "from version one", None, {})]
    versions = sqlite3.connect(path).execute("SELECT version FROM schema_version ORDER BY 1").fetchall()
    assert [v[0] for v in versions] == list(range(1, len(MIGRATIONS) + 1))


def test_a_newer_schema_than_the_code_knows_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db)
    db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    db.close()
    with pytest.raises(StoreError, match="newer than this code"):
        arun(store_at(path).open())


def test_a_corrupt_file_is_a_clear_error_not_an_empty_history(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database at all " * 200)
    with pytest.raises(StoreError, match="corrupt or not a SQLite database") as raised:
        arun(store_at(path).open())
    assert str(path) in str(raised.value)
    assert path.read_bytes().startswith(b"this is not a database")  # left as it was, for recovery


def test_a_locked_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("CREATE TABLE t (x)")
    try:
        with pytest.raises(StoreError, match="locked"):
            arun(store_at(path).open())
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_erasure_leaves_no_trace_of_the_text_in_the_files(tmp_path: Path) -> None:
    path = tmp_path / "erase.db"

    async def scenario() -> tuple[bool, bool, object, object]:
        store = store_at(path)
        await one_turn(store, "gone", user="my secret word is pineapple")
        await one_turn(store, "kept", user="keep this one")
        erased, again = await store.delete_session("gone"), await store.delete_session("gone")
        result = erased, again, await store.get_session("gone"), await store.messages("kept")
        await store.close()
        return result

    erased, again, record, kept = arun(scenario())  # type: ignore[misc]
    assert (erased, again, record) == (True, False, None)
    assert [m.text for m in kept] == ["keep this one", "I will."]  # type: ignore[attr-defined]
    files = b"".join(p.read_bytes() for p in tmp_path.glob("erase.db*"))
    assert b"pineapple" not in files and b"keep this one" in files


def test_retention_purges_old_ended_conversations_only(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, list[str]]:
        store = store_at(tmp_path / "old.db")
        day = 86400
        await one_turn(store, "ancient", last_active=time.time() - 40 * day)
        await store.end_session("ancient", "closed")
        await one_turn(store, "recent", last_active=time.time() - 2 * day)
        await store.end_session("recent", "closed")
        await one_turn(store, "live-old", last_active=time.time() - 40 * day)  # still open
        purged = await store.purge(time.time() - 30 * day)
        records, _ = await store.list_sessions(None, 10, 0)
        await store.close()
        return purged, sorted(r.session_id for r in records)

    assert arun(scenario()) == (1, ["live-old", "recent"])


def test_text_storage_off_keeps_only_metadata_and_timings(tmp_path: Path) -> None:
    async def scenario() -> object:
        store = store_at(tmp_path / "notext.db", store_text=False)
        await one_turn(store)
        await store.set_heard("s1", 1, "I")
        messages = await store.messages("s1")
        await store.close()
        return messages

    messages = arun(scenario())
    assert [(m.role, m.text, m.heard, m.confidence) for m in messages] == [  # type: ignore[attr-defined]
        ("user", None, None, 0.9), ("assistant", None, None, None)]
    assert messages[1].timings == {"first_token": 120.0}  # type: ignore[index]
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("notext.db*"))
    assert b"pineapple" not in raw


def test_listing_is_per_principal_paginated_newest_first(tmp_path: Path) -> None:
    async def scenario() -> tuple[object, ...]:
        store = store_at(tmp_path / "list.db")
        for i in range(5):
            await one_turn(store, f"a{i}", "alice", last_active=1000.0 + i)
        await one_turn(store, "b0", "bob")
        first, total = await store.list_sessions("alice", 2, 0)
        second, _ = await store.list_sessions("alice", 2, 2)
        _, all_total = await store.list_sessions(None, 100, 0)
        await store.close()
        return [r.session_id for r in first], total, [r.session_id for r in second], all_total

    assert arun(scenario()) == (["a4", "a3"], 5, ["a2", "a1"], 6)


# --- the orchestrator with its store, in-process -----------------------------------------------------

Scenario = Callable[[InProcess], Awaitable[object]]


def run(h: InProcess, scenario: Scenario) -> object:
    async def main() -> object:
        await h.ready()
        await h.start()
        h.to_worker("asr")
        try:
            return await scenario(h)
        finally:
            await h.orchestrator.turns.flush()
            await h.orchestrator.store.close()

    return asyncio.run(main())


async def whole_turn(h: InProcess, turn: int, text: str, reply: str) -> list[object]:
    request = await final(h, turn, text)
    await tokens(h, request, llm_tokens(reply), last=True)
    for phrase in h.to_worker("tts"):
        await speak(h, phrase)
    return h.to_gateway()


def test_a_turn_is_stored_before_its_tts_end_and_resumed_after_a_restart(tmp_path: Path) -> None:
    seen: list[object] = []

    async def first_life(h: InProcess) -> None:
        store = h.orchestrator.store
        original = h.orchestrator.gateways.send

        def send(gateway_id: str, frame: object) -> bool:
            if isinstance(frame, TurnEvent) and frame.event == "tts.end":
                seen.append(asyncio.get_running_loop().create_task(store.messages(SID)))
            return original(gateway_id, frame)  # type: ignore[arg-type]

        h.orchestrator.gateways.send = send  # type: ignore[method-assign]
        await whole_turn(h, 1, "remember pineapple", "I will remember it.")
        await asyncio.gather(*seen)  # type: ignore[arg-type]
        # no PlaybackMark done: the orchestrator is "killed" before the gateway confirms

    run(InProcess(tmp_path), first_life)
    at_tts_end = seen[0].result()  # type: ignore[attr-defined]
    assert [(m.role, m.text) for m in at_tts_end] == [("user", "remember pineapple"),
                                                      ("assistant", "I will remember it.")]
    assert at_tts_end[1].timings["tts_end"] >= at_tts_end[1].timings["first_audio"] > 0

    async def second_life(h: InProcess) -> object:
        return await final(h, 2, "what did I say")

    request = run(InProcess(tmp_path), second_life)
    assert [(m.role, m.content) for m in request.messages][1:] == [  # type: ignore[attr-defined]
        ("user", "remember pineapple"), ("assistant", "I will remember it."), ("user", "what did I say")]
    assert request.turn_id == 2  # type: ignore[attr-defined]


def test_an_interrupted_reply_is_stored_as_heard(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> object:
        request = await final(h, 1, "count")
        await tokens(h, request, llm_tokens("One two. Three four. Five six."), last=False)
        first = h.to_worker("tts")[0]
        await speak(h, first)
        await h.ingress(PlaybackMark(session_id=SID, turn_id=1, text=first.text))
        await h.result(VadEvent(session_id=SID, event="speech_start", instance_id="asr-0"))
        await h.orchestrator.turns.flush()
        return await h.orchestrator.store.messages(SID)

    messages = run(InProcess(tmp_path), scenario)
    assert [(m.role, m.text, m.heard) for m in messages] == [  # type: ignore[attr-defined]
        ("user", "count", None),
        ("assistant", "One two. Three four. Five six.", "One two.")]  # (generated, heard)


def test_another_principal_cannot_resume_read_list_or_delete(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> dict[str, object]:
        await whole_turn(h, 1, "my secret", "Noted.")
        await h.ingress(PlaybackMark(session_id=SID, turn_id=1, done=True))
        await h.ingress(SessionDelete(session_id="x", principal="p1"))  # nothing: found False
        h.to_gateway()
        await h.ingress(SessionEnd(session_id=SID, reason="client_closed"))
        out: dict[str, object] = {}
        await h.ingress(GatewayHeartbeat(gateway_id="gw1", incarnation="i1"))
        await h.ingress(SessionStart(session_id=SID, gateway_id="gw1", principal="mallory"))
        out["resume"] = h.to_gateway("gw1")
        for name, frame in (("read", HistoryRequest(session_id=SID, principal="mallory")),
                            ("list", SessionList(principal="mallory")),
                            ("delete", SessionDelete(session_id=SID, principal="mallory")),
                            ("owner_read", HistoryRequest(session_id=SID, principal="p1")),
                            ("admin_list", SessionList(admin=True)),
                            ("owner_delete", SessionDelete(session_id=SID, principal="p1")),
                            ("after", HistoryRequest(session_id=SID, principal="p1"))):
            frame.request_id = name
            await h.ingress(frame)
            out[name] = h.to_gateway()
        return out

    out = run(InProcess(tmp_path), scenario)
    assert isinstance(out, dict)
    refusal = out["resume"]
    assert len(refusal) == 1 and isinstance(refusal[0], ErrorEvent)
    assert (refusal[0].code, refusal[0].fatal) == ("session_unavailable", True)
    [read] = out["read"]
    assert isinstance(read, HistoryReply) and not read.found and read.stored == []
    [listing] = out["list"]
    assert isinstance(listing, SessionListReply) and (listing.total, listing.sessions) == (0, [])
    [deleted] = out["delete"]
    assert isinstance(deleted, SessionDeleted) and not deleted.found
    [owner] = out["owner_read"]
    assert isinstance(owner, HistoryReply) and owner.found and owner.session is not None
    assert [(m.role, m.content) for m in owner.stored] == [("user", "my secret"), ("assistant", "Noted.")]
    assert owner.session.ended and owner.session.end_reason == "client_closed"
    [everyone] = out["admin_list"]
    assert isinstance(everyone, SessionListReply) and [s.session_id for s in everyone.sessions] == [SID]
    [erased] = out["owner_delete"]
    assert isinstance(erased, SessionDeleted) and erased.found
    [after] = out["after"]
    assert isinstance(after, HistoryReply) and not after.found


def test_an_orchestrator_with_a_corrupt_store_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "inzwa.db").write_bytes(b"garbage" * 1000)
    h = InProcess(tmp_path)
    with pytest.raises(StoreError, match="corrupt"):
        arun(h.orchestrator.serve(asyncio.Event()))


def test_the_same_owner_starting_a_live_session_again_keeps_its_history_once(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> object:
        await whole_turn(h, 1, "remember pineapple", "Noted.")
        await h.ingress(PlaybackMark(session_id=SID, turn_id=1, done=True))
        await h.start()  # the same gateway and principal, the session still live
        return await final(h, 2, "what was it")

    request = run(InProcess(tmp_path), scenario)
    assert [(m.role, m.content) for m in request.messages][1:] == [  # type: ignore[attr-defined]
        ("user", "remember pineapple"), ("assistant", "Noted."), ("user", "what was it")]


def test_a_turn_interrupted_while_it_is_written_sends_no_tts_end_after_its_cancel(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> object:
        store = h.orchestrator.store
        write = store.record_turn

        async def record_turn(turn: TurnRecord) -> None:
            if turn.turn_id == 1 and turn.heard is None:  # the write before tts.end: type meanwhile
                await h.ingress(TextIn(session_id=SID, text="stop, new question"))
            await write(turn)

        store.record_turn = record_turn  # type: ignore[method-assign]
        out = await whole_turn(h, 1, "count", "One two.")
        await h.orchestrator.turns.flush()
        return out, await store.messages(SID)

    out, messages = run(InProcess(tmp_path), scenario)  # type: ignore[misc]
    events = [(f.turn_id, f.event) for f in out if isinstance(f, TurnEvent)]
    assert events == [(1, "tts.start"), (1, "tts.cancel")], events
    assert [(m.turn_id, m.role, m.heard) for m in messages][:2] == [(1, "user", None), (1, "assistant", "")]


def test_erasing_a_live_session_mid_reply_ends_it_and_leaves_nothing(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> tuple[list[object], object, object]:
        await whole_turn(h, 1, "first", "Done.")
        request = await final(h, 2, "second")
        await tokens(h, request, llm_tokens("Half of a"), last=False)  # a reply in progress
        h.to_gateway()
        await h.ingress(SessionDelete(session_id=SID, principal="p1", request_id="del"))
        out = h.to_gateway()
        await h.orchestrator.turns.flush()
        store = h.orchestrator.store
        return out, await store.get_session(SID), await store.messages(SID)

    out, record, messages = run(InProcess(tmp_path), scenario)  # type: ignore[misc]
    errors = [f for f in out if isinstance(f, ErrorEvent)]
    assert [(e.code, e.fatal) for e in errors] == [("session_deleted", True)]
    [deleted] = [f for f in out if isinstance(f, SessionDeleted)]
    assert deleted.found and record is None and messages == []
