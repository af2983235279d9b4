"""The conversation store in PostgreSQL (`INZWA_DB_URL=postgresql://...`, the `postgres` extra).

The same schema and migrations as SQLite (orchestrator/store_sqlite.py), in PostgreSQL's types;
asyncpg is natively asynchronous, so no writer thread. Migrations run under an advisory lock,
so two orchestrators starting at once do not both apply them. For more than one node: every
shard's orchestrator can use one server (session ids are unique across shards).
"""

from __future__ import annotations

import json
import time
from typing import Any

from orchestrator.store import MessageRecord, SessionRecord, StoreError, TurnModel, TurnRecord, message_rows
from orchestrator.store_sqlite import MIGRATIONS as SQLITE_MIGRATIONS

MIGRATION_LOCK = 0x1A2A_0013  # pg_advisory_xact_lock key: one migrator at a time

MIGRATIONS = [  # SQLite's, in PostgreSQL's types
    sql.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
    .replace(" REAL", " DOUBLE PRECISION")
    for sql in SQLITE_MIGRATIONS
]

_SESSION_SELECT = (
    "SELECT s.id, s.principal, s.language, s.voice, s.created, s.last_active, s.ended, "
    "s.end_reason, (SELECT coalesce(max(turn_id), 0) FROM messages m WHERE m.session_id = s.id) "
    "FROM sessions s")


class PostgresStore:
    def __init__(self, url: str, *, store_text: bool = True, busy_timeout_s: float = 5.0) -> None:
        self.url = url
        self.store_text = store_text
        self.timeout_s = max(busy_timeout_s, 1.0)
        self._pool: Any = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        import asyncpg  # only for postgresql:// URLs

        try:
            pool = await asyncpg.create_pool(self.url, min_size=1, max_size=4,
                                             timeout=self.timeout_s, command_timeout=self.timeout_s)
            async with pool.acquire() as db, db.transaction():
                await db.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
                await self._migrate(db)
                await db.execute("UPDATE sessions SET ended = $1, end_reason = 'orchestrator_restarted' "
                                 "WHERE ended IS NULL", time.time())
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"conversation store {_safe(self.url)}: cannot be used ({exc})") from exc
        self._pool = pool

    @staticmethod
    async def _migrate(db: Any) -> None:
        await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = await db.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        if current > len(MIGRATIONS):
            raise StoreError(f"the database is at schema version {current}, newer than this code "
                             f"knows ({len(MIGRATIONS)}): refusing to use it")
        for version in range(current + 1, len(MIGRATIONS) + 1):
            await db.execute(MIGRATIONS[version - 1])
            await db.execute("INSERT INTO schema_version (version) VALUES ($1)", version)

    async def _pool_ready(self) -> Any:
        await self.open()
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def get_session(self, session_id: str) -> SessionRecord | None:
        row = await (await self._pool_ready()).fetchrow(f"{_SESSION_SELECT} WHERE s.id = $1", session_id)
        return SessionRecord(*row) if row else None

    async def start_session(self, record: SessionRecord) -> None:
        await (await self._pool_ready()).execute(
            "INSERT INTO sessions (id, principal, language, voice, created, last_active) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET ended = NULL, "
            "end_reason = '', last_active = excluded.last_active, language = excluded.language",
            record.session_id, record.principal, record.language, record.voice, record.created,
            record.last_active)

    async def end_session(self, session_id: str, reason: str) -> None:
        await (await self._pool_ready()).execute(
            "UPDATE sessions SET ended = $1, end_reason = $2 WHERE id = $3 AND ended IS NULL",
            time.time(), reason, session_id)

    async def record_turn(self, turn: TurnRecord) -> None:
        now = time.time()
        rows = message_rows(turn, self.store_text, now)
        async with (await self._pool_ready()).acquire() as db, db.transaction():
            await db.executemany(_UPSERT_MESSAGE, rows)
            await db.executemany(
                "INSERT INTO turn_models VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT "
                "(session_id, turn_id, kind) DO UPDATE SET name = excluded.name, "
                "version = excluded.version, sha256 = excluded.sha256",
                [(turn.session_id, turn.turn_id, m.kind, m.name, m.version, m.sha256) for m in turn.models])
            await db.execute("UPDATE sessions SET last_active = $1 WHERE id = $2", now, turn.session_id)

    async def set_heard(self, session_id: str, turn_id: int, heard: str) -> None:
        await (await self._pool_ready()).execute(
            "UPDATE messages SET heard = $1 WHERE session_id = $2 AND turn_id = $3 AND role = 'assistant'",
            heard if self.store_text else None, session_id, turn_id)

    async def delete_message(self, session_id: str, turn_id: int, role: str) -> None:
        await (await self._pool_ready()).execute(
            "DELETE FROM messages WHERE session_id = $1 AND turn_id = $2 AND role = $3",
            session_id, turn_id, role)

    async def set_system_prompt(self, session_id: str, prompt: str) -> None:
        await (await self._pool_ready()).execute(
            "UPDATE sessions SET system_prompt = $1 WHERE id = $2",
            prompt if self.store_text else "", session_id)

    async def system_prompt(self, session_id: str) -> str:
        value = await (await self._pool_ready()).fetchval(
            "SELECT system_prompt FROM sessions WHERE id = $1", session_id)
        return str(value or "")

    async def messages(self, session_id: str) -> list[MessageRecord]:
        rows = await (await self._pool_ready()).fetch(
            "SELECT turn_id, role, text, heard, language, confidence, timings, created FROM messages "
            "WHERE session_id = $1 ORDER BY turn_id, role = 'assistant', id", session_id)
        return [MessageRecord(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6] or "{}"), r[7])
                for r in rows]

    async def turn_models(self, session_id: str) -> dict[int, list[TurnModel]]:
        models: dict[int, list[TurnModel]] = {}
        for row in await (await self._pool_ready()).fetch(
                "SELECT turn_id, kind, name, version, sha256 FROM turn_models WHERE session_id = $1 "
                "ORDER BY turn_id, kind", session_id):
            models.setdefault(row[0], []).append(TurnModel(*row[1:]))
        return models

    async def list_sessions(self, principal: str | None, limit: int, offset: int
                            ) -> tuple[list[SessionRecord], int]:
        pool = await self._pool_ready()
        where, args = ("WHERE s.principal = $1", [principal]) if principal is not None else ("", [])
        n = len(args)
        total = await pool.fetchval(f"SELECT count(*) FROM sessions s {where}", *args)
        rows = await pool.fetch(f"{_SESSION_SELECT} {where} ORDER BY s.last_active DESC, s.id "
                                f"LIMIT ${n + 1} OFFSET ${n + 2}", *args, limit, offset)
        return [SessionRecord(*r) for r in rows], int(total)

    async def delete_session(self, session_id: str) -> bool:
        return await self._erase("id = $1", session_id) > 0

    async def purge(self, older_than: float) -> int:
        return await self._erase("last_active < $1 AND ended IS NOT NULL", older_than)

    async def _erase(self, condition: str, arg: Any) -> int:
        """(PostgreSQL keeps deleted rows until (auto)vacuum reclaims them: erased text is
        unreachable at once, and physically gone after the next vacuum of the tables.)"""
        async with (await self._pool_ready()).acquire() as db, db.transaction():
            ids = [r[0] for r in await db.fetch(f"SELECT id FROM sessions WHERE {condition}", arg)]
            for table in ("messages", "turn_models"):
                await db.execute(f"DELETE FROM {table} WHERE session_id = ANY($1::text[])", ids)
            await db.execute("DELETE FROM sessions WHERE id = ANY($1::text[])", ids)
        return len(ids)


_UPSERT_MESSAGE = (
    "INSERT INTO messages (session_id, turn_id, role, text, heard, language, confidence, timings, "
    "created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (session_id, turn_id, role) "
    "DO UPDATE SET text = excluded.text, heard = excluded.heard, timings = excluded.timings")


def _safe(url: str) -> str:
    """The URL without its password (it goes into an error message and the logs)."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}{at}{host}" if at else url
