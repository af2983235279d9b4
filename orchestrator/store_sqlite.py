"""The conversation store in SQLite (the default): one file, WAL, migrations kept in code.

Every query runs on one writer thread that owns the connection, so the orchestrator's event
loop never waits on the disk; a turn's rows are committed in one transaction (synchronous=FULL:
a committed turn survives a SIGKILL of the process and a power cut). Deleted rows are zeroed
(secure_delete) and the WAL is checkpointed after an erasure, so an erased conversation is
not left readable in free pages.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.store import MessageRecord, SessionRecord, StoreError, TurnModel, TurnRecord, message_rows

T = TypeVar("T")

# Each entry moves the schema one version up; never edit one that has shipped, append a new one.
MIGRATIONS: list[str] = [
    # 1: sessions and their messages
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY, principal TEXT NOT NULL, language TEXT NOT NULL DEFAULT '',
        voice TEXT NOT NULL DEFAULT '', created REAL NOT NULL, last_active REAL NOT NULL,
        ended REAL, end_reason TEXT NOT NULL DEFAULT '');
    CREATE INDEX sessions_by_principal ON sessions (principal, last_active);
    CREATE INDEX sessions_by_activity ON sessions (last_active);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        turn_id INTEGER NOT NULL, role TEXT NOT NULL, text TEXT, language TEXT NOT NULL DEFAULT '',
        confidence REAL, created REAL NOT NULL);
    CREATE INDEX messages_by_session ON messages (session_id, turn_id);
    """,
    # 2: what was heard of an interrupted reply, stage timings, the models of each turn
    """
    ALTER TABLE messages ADD COLUMN heard TEXT;
    ALTER TABLE messages ADD COLUMN timings TEXT NOT NULL DEFAULT '{}';
    CREATE UNIQUE INDEX messages_one_per_role ON messages (session_id, turn_id, role);
    CREATE TABLE turn_models (
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        turn_id INTEGER NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
        version TEXT NOT NULL DEFAULT '', sha256 TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (session_id, turn_id, kind));
    """,
    # 3: handoffs to human operators (handoff area, issue 14; orchestrator/handoff_store.py):
    # state, triggers and their evidence, the operator, and the turns the operator spoke
    """
    CREATE TABLE handoffs (
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
        language TEXT NOT NULL DEFAULT '', triggers TEXT NOT NULL DEFAULT '[]',
        confidences TEXT NOT NULL DEFAULT '[]', operator TEXT NOT NULL DEFAULT '',
        operator_conn TEXT NOT NULL DEFAULT '', turns TEXT NOT NULL DEFAULT '[]',
        requested REAL NOT NULL, accepted REAL, ended REAL, outcome TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (session_id, seq));
    CREATE INDEX handoffs_open ON handoffs (state);
    """,
    # 4: the session's own system prompt (OpenAI Realtime instructions), shown after it ends
    """
    ALTER TABLE sessions ADD COLUMN system_prompt TEXT NOT NULL DEFAULT '';
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Apply the migrations the database lacks (up to `target`), each with its version row, in
    the caller's transaction; the version it is at now."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = db.execute("SELECT max(version) FROM schema_version").fetchone()
    current = row[0] or 0
    if current > len(MIGRATIONS):
        raise StoreError(f"the database is at schema version {current}, newer than this code "
                         f"knows ({len(MIGRATIONS)}): refusing to use it")
    for version in range(current + 1, target + 1):
        for statement in MIGRATIONS[version - 1].split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
    return max(current, target)


class SqliteStore:
    def __init__(self, path: Path, *, store_text: bool = True, busy_timeout_s: float = 5.0) -> None:
        self.path = path
        self.store_text = store_text
        self.busy_timeout_s = busy_timeout_s
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on the store's thread, connecting first if not yet connected (a failed
        connection is tried again by the next call, and raises again)."""
        def job() -> T:
            if self._db is None:
                self._connect()
            assert self._db is not None
            try:
                return work(self._db)
            except sqlite3.Error as exc:
                raise StoreError(_explain(self.path, exc)) from exc

        return await asyncio.get_running_loop().run_in_executor(self._thread, job)

    # --- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(lambda db: None)

    def _connect(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
            self._prepare(db)
        except sqlite3.DatabaseError as exc:
            raise StoreError(_explain(self.path, exc)) from exc
        self._db = db

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL (journal mode {mode})")
        for pragma in ("synchronous = FULL", "foreign_keys = ON", "secure_delete = ON"):
            db.execute(f"PRAGMA {pragma}")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {check}")
        with _transaction(db):
            migrate(db)
            # Sessions a previous run left open ended with it (their history stays).
            db.execute("UPDATE sessions SET ended = ?, end_reason = 'orchestrator_restarted' "
                       "WHERE ended IS NULL", (time.time(),))

    async def close(self) -> None:
        def work() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._thread, work)

    # --- sessions --------------------------------------------------------------------------------

    async def get_session(self, session_id: str) -> SessionRecord | None:
        def work(db: sqlite3.Connection) -> SessionRecord | None:
            row = db.execute(f"{_SESSION_SELECT} WHERE s.id = ?", (session_id,)).fetchone()
            return _session(row) if row else None

        return await self._run(work)

    async def start_session(self, record: SessionRecord) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO sessions (id, principal, language, voice, created, last_active) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET ended = NULL, "
                "end_reason = '', last_active = excluded.last_active, language = excluded.language",
                (record.session_id, record.principal, record.language, record.voice,
                 record.created, record.last_active))

        await self._run(work)

    async def end_session(self, session_id: str, reason: str) -> None:
        await self._run(lambda db: db.execute(
            "UPDATE sessions SET ended = ?, end_reason = ? WHERE id = ? AND ended IS NULL",
            (time.time(), reason, session_id)))

    # --- turns -----------------------------------------------------------------------------------

    async def record_turn(self, turn: TurnRecord) -> None:
        now = time.time()
        rows = message_rows(turn, self.store_text, now)

        def work(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.executemany(_UPSERT_MESSAGE, rows)
                db.executemany(
                    "INSERT OR REPLACE INTO turn_models VALUES (?, ?, ?, ?, ?, ?)",
                    [(turn.session_id, turn.turn_id, m.kind, m.name, m.version, m.sha256)
                     for m in turn.models])
                db.execute("UPDATE sessions SET last_active = ? WHERE id = ?", (now, turn.session_id))

        await self._run(work)

    async def set_heard(self, session_id: str, turn_id: int, heard: str) -> None:
        value = heard if self.store_text else None
        await self._run(lambda db: db.execute(
            "UPDATE messages SET heard = ? WHERE session_id = ? AND turn_id = ? AND role = 'assistant'",
            (value, session_id, turn_id)))

    async def delete_message(self, session_id: str, turn_id: int, role: str) -> None:
        await self._run(lambda db: db.execute(
            "DELETE FROM messages WHERE session_id = ? AND turn_id = ? AND role = ?",
            (session_id, turn_id, role)))

    async def set_system_prompt(self, session_id: str, prompt: str) -> None:
        value = prompt if self.store_text else ""
        await self._run(lambda db: db.execute(
            "UPDATE sessions SET system_prompt = ? WHERE id = ?", (value, session_id)))

    async def system_prompt(self, session_id: str) -> str:
        row = await self._run(lambda db: db.execute(
            "SELECT system_prompt FROM sessions WHERE id = ?", (session_id,)).fetchone())
        return str(row[0]) if row else ""

    async def messages(self, session_id: str) -> list[MessageRecord]:
        def work(db: sqlite3.Connection) -> list[MessageRecord]:
            rows = db.execute(
                "SELECT turn_id, role, text, heard, language, confidence, timings, created "
                "FROM messages WHERE session_id = ? ORDER BY turn_id, role = 'assistant', id",
                (session_id,)).fetchall()
            return [MessageRecord(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6] or "{}"), r[7])
                    for r in rows]

        return await self._run(work)

    async def turn_models(self, session_id: str) -> dict[int, list[TurnModel]]:
        def work(db: sqlite3.Connection) -> dict[int, list[TurnModel]]:
            models: dict[int, list[TurnModel]] = {}
            for row in db.execute("SELECT turn_id, kind, name, version, sha256 FROM turn_models "
                                  "WHERE session_id = ? ORDER BY turn_id, kind", (session_id,)):
                models.setdefault(row[0], []).append(TurnModel(*row[1:]))
            return models

        return await self._run(work)

    # --- listing, erasure, retention ---------------------------------------------------------------

    async def list_sessions(self, principal: str | None, limit: int, offset: int
                            ) -> tuple[list[SessionRecord], int]:
        where, args = ("WHERE s.principal = ?", [principal]) if principal is not None else ("", [])

        def work(db: sqlite3.Connection) -> tuple[list[SessionRecord], int]:
            total = db.execute(f"SELECT count(*) FROM sessions s {where}", args).fetchone()[0]
            rows = db.execute(f"{_SESSION_SELECT} {where} ORDER BY s.last_active DESC, s.id "
                              "LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
            return [_session(r) for r in rows], int(total)

        return await self._run(work)

    async def delete_session(self, session_id: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                found = _erase(db, "id = ?", (session_id,))
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no copy of it left in the WAL
            return found > 0

        return await self._run(work)

    async def purge(self, older_than: float) -> int:
        def work(db: sqlite3.Connection) -> int:
            with _transaction(db):
                count = _erase(db, "last_active < ? AND ended IS NOT NULL", (older_than,))
            if count:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return count

        return await self._run(work)


_SESSION_SELECT = (
    "SELECT s.id, s.principal, s.language, s.voice, s.created, s.last_active, s.ended, "
    "s.end_reason, (SELECT coalesce(max(turn_id), 0) FROM messages m WHERE m.session_id = s.id) "
    "FROM sessions s")
_UPSERT_MESSAGE = (
    "INSERT INTO messages (session_id, turn_id, role, text, heard, language, confidence, timings, "
    "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (session_id, turn_id, role) DO UPDATE "
    "SET text = excluded.text, heard = excluded.heard, timings = excluded.timings")


def _session(row: tuple[Any, ...]) -> SessionRecord:
    return SessionRecord(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8])


def _erase(db: sqlite3.Connection, condition: str, args: tuple[Any, ...]) -> int:
    ids = [r[0] for r in db.execute(f"SELECT id FROM sessions WHERE {condition}", args)]
    for table in ("messages", "turn_models"):
        db.executemany(f"DELETE FROM {table} WHERE session_id = ?", [(i,) for i in ids])
    db.executemany("DELETE FROM sessions WHERE id = ?", [(i,) for i in ids])
    return len(ids)


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if kind is not None else "COMMIT")


def _explain(path: Path, exc: sqlite3.Error) -> str:
    reason = str(exc)
    if "locked" in reason or "busy" in reason:
        hint = "another process holds it locked (a second orchestrator?)"
    elif "not a database" in reason or "malformed" in reason or "integrity" in reason:
        hint = "the file is corrupt or not a SQLite database; restore it from a backup or move it away"
    else:
        hint = "failed"
    return f"conversation store {path}: {hint} ({reason})"
