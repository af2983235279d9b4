"""Handoffs in the conversation store (the `handoffs` table, migration 3 of store_sqlite.py).

Written at every change of a handoff's state, so a restarted orchestrator finds the open ones
(`open_handoffs`) and `GET /v1/sessions/{id}` shows them with the turns each operator spoke. The
SQL runs on the store's own writer thread (SQLite) or pool (PostgreSQL); any other store (a test
double) keeps handoffs in memory only. Trigger evidence is content: with `store_text` off it is
not written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from common.frames import HandoffInfo, HandoffTrigger
from orchestrator.store import ConversationStore

log = logging.getLogger(__name__)

COLUMNS = ("session_id", "seq", "state", "reason", "language", "triggers", "confidences", "operator",
           "operator_conn", "turns", "requested", "accepted", "ended", "outcome")


@dataclass
class HandoffRecord:
    session_id: str
    seq: int  # the session's n-th handoff
    state: str = "requested"  # requested | accepted | ended
    reason: str = ""
    language: str = ""
    triggers: list[HandoffTrigger] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    operator: str = ""  # the operator's principal
    operator_conn: str = ""  # the operator's connection (to re-attach after a restart)
    turns: list[int] = field(default_factory=list)  # turns the operator spoke
    requested: float = 0.0
    accepted: float | None = None
    ended: float | None = None
    outcome: str = ""


def _row(record: HandoffRecord, store_text: bool) -> tuple[Any, ...]:
    triggers = [{"kind": t.kind, "evidence": t.evidence if store_text else "", "score": t.score,
                 "at": t.at} for t in record.triggers]
    return (record.session_id, record.seq, record.state, record.reason, record.language,
            json.dumps(triggers), json.dumps(record.confidences), record.operator,
            record.operator_conn, json.dumps(record.turns), record.requested, record.accepted,
            record.ended, record.outcome)


def _record(row: Any) -> HandoffRecord:
    values = list(row)
    triggers = [HandoffTrigger(**t) for t in json.loads(values[5] or "[]")]
    return HandoffRecord(values[0], values[1], values[2], values[3], values[4], triggers,
                         json.loads(values[6] or "[]"), values[7], values[8], json.loads(values[9] or "[]"),
                         values[10], values[11], values[12], values[13])


_SELECT = f"SELECT {', '.join(COLUMNS)} FROM handoffs"
_UPSERT_SQLITE = (f"INSERT OR REPLACE INTO handoffs ({', '.join(COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(COLUMNS))})")
_UPSERT_PG = (f"INSERT INTO handoffs ({', '.join(COLUMNS)}) VALUES "
              f"({', '.join(f'${i + 1}' for i in range(len(COLUMNS)))}) ON CONFLICT (session_id, seq) "
              "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[2:]))


class HandoffStore:
    def __init__(self, store: ConversationStore) -> None:
        self.store = store
        self.kind = type(store).__name__  # SqliteStore | PostgresStore | anything else: memory
        self.store_text = bool(getattr(store, "store_text", True))

    async def save(self, record: HandoffRecord) -> None:
        row = _row(record, self.store_text)
        if self.kind == "SqliteStore":
            await self.store._run(lambda db: db.execute(_UPSERT_SQLITE, row))  # type: ignore[attr-defined]
        elif self.kind == "PostgresStore":
            pool = await self.store._pool_ready()  # type: ignore[attr-defined]
            await pool.execute(_UPSERT_PG, *row)

    async def _select(self, where: str, args: tuple[Any, ...]) -> list[HandoffRecord]:
        if self.kind == "SqliteStore":
            rows = await self.store._run(  # type: ignore[attr-defined]
                lambda db: db.execute(f"{_SELECT} {where}", args).fetchall())
        elif self.kind == "PostgresStore":
            pool = await self.store._pool_ready()  # type: ignore[attr-defined]
            rows = await pool.fetch(f"{_SELECT} {where.replace('?', '$1')}", *args)
        else:
            return []
        return [_record(r) for r in rows]

    async def of_session(self, session_id: str) -> list[HandoffRecord]:
        return await self._select("WHERE session_id = ? ORDER BY seq", (session_id,))

    async def open_handoffs(self) -> list[HandoffRecord]:
        """Handoffs not ended: a restarted orchestrator carries them on."""
        return await self._select("WHERE state != ? ORDER BY requested", ("ended",))


def infos(records: list[HandoffRecord], live: bool) -> list[HandoffInfo]:
    """A session's handoffs as `GET /v1/sessions/{id}` shows them (no history: it has its own)."""
    return [HandoffInfo(r.session_id, r.state, r.reason, r.language, r.requested, r.accepted, r.ended,
                        r.outcome, r.operator, list(r.triggers), [], list(r.confidences), {},
                        list(r.turns), live and r.state != "ended") for r in records]
