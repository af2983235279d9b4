"""The durable conversation store: sessions, their messages and the models that served each turn.

The orchestrator is its only writer. It is reached through `ConversationStore` so that another
database can replace SQLite by URL (`INZWA_DB_URL`): `sqlite:///path` (the default) or
`postgresql://...` (orchestrator/store_postgres.py, asyncpg), the same schema in each.
Raw audio is never stored; with `store_text` off neither is any text (metadata and timings only).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from common.settings import Settings


class StoreError(RuntimeError):
    """The store cannot be used (locked, corrupt, unreachable): the orchestrator must not start
    with a silently empty history."""


@dataclass
class SessionRecord:
    session_id: str
    principal: str
    language: str = ""
    voice: str = ""
    created: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.time)
    ended: float | None = None
    end_reason: str = ""
    turns: int = 0  # the highest turn id stored (a resumed session numbers on from it)


@dataclass
class MessageRecord:
    turn_id: int
    role: str  # "user" | "assistant"
    text: str | None  # None when text storage is off
    heard: str | None = None  # an interrupted reply: what the person actually heard
    language: str = ""
    confidence: float | None = None  # the ASR's, for a spoken user turn
    timings: dict[str, float] = field(default_factory=dict)  # ms since the turn started
    created: float = field(default_factory=time.time)


@dataclass
class TurnModel:
    kind: str  # asr | llm | tts
    name: str
    version: str = ""
    sha256: str = ""


@dataclass
class TurnRecord:
    """One committed turn: what the user said and what the assistant said (or, interrupted,
    what of it was heard)."""

    session_id: str
    turn_id: int
    user_text: str
    reply_text: str
    heard: str | None = None  # set only when the reply was interrupted
    language: str = ""
    confidence: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    models: list[TurnModel] = field(default_factory=list)


class ConversationStore(Protocol):
    async def open(self) -> None:
        """Connect, migrate, end sessions a previous run left open; StoreError if unusable."""

    async def close(self) -> None: ...

    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    async def start_session(self, record: SessionRecord) -> None:
        """Create the session, or reopen it (a resume): not ended, active now."""

    async def end_session(self, session_id: str, reason: str) -> None: ...

    async def record_turn(self, turn: TurnRecord) -> None:
        """Write (or, for a turn already written, update) a turn in one transaction."""

    async def set_heard(self, session_id: str, turn_id: int, heard: str) -> None:
        """A written reply was interrupted while playing: keep what was heard."""

    async def delete_message(self, session_id: str, turn_id: int, role: str) -> None:
        """A client deleted a message of its conversation (OpenAI Realtime item delete)."""

    async def set_system_prompt(self, session_id: str, prompt: str) -> None:
        """The session's own system prompt (OpenAI Realtime instructions; "" with store_text off)."""

    async def system_prompt(self, session_id: str) -> str: ...

    async def messages(self, session_id: str) -> list[MessageRecord]: ...

    async def turn_models(self, session_id: str) -> dict[int, list[TurnModel]]: ...

    async def list_sessions(self, principal: str | None, limit: int, offset: int
                            ) -> tuple[list[SessionRecord], int]:
        """A page of sessions, newest activity first, and the total (`None`: everyone's)."""

    async def delete_session(self, session_id: str) -> bool:
        """Erase a session and everything of it, for good; False if there was none."""

    async def purge(self, older_than: float) -> int:
        """Erase sessions last active before `older_than` (epoch seconds); how many."""


def database_url(settings: Settings) -> str:
    return settings.db_url or f"sqlite:///{Path(settings.run_dir).resolve() / 'inzwa.db'}"


def open_store(settings: Settings) -> ConversationStore:
    """The store for `INZWA_DB_URL` (not yet opened)."""
    url = database_url(settings)
    if url.startswith("sqlite:///"):
        from orchestrator.store_sqlite import SqliteStore

        return SqliteStore(Path(url.removeprefix("sqlite:///")), store_text=settings.store_text,
                           busy_timeout_s=settings.store_busy_timeout_s)
    if url.startswith(("postgresql://", "postgres://")):
        from orchestrator.store_postgres import PostgresStore

        return PostgresStore(url, store_text=settings.store_text,
                             busy_timeout_s=settings.store_busy_timeout_s)
    scheme = url.partition(":")[0]
    raise StoreError(f"INZWA_DB_URL: no conversation store for '{scheme}' URLs "
                     "(sqlite:///path or postgresql://...)")


def message_rows(turn: TurnRecord, store_text: bool, now: float) -> list[tuple[Any, ...]]:
    """A committed turn's message rows, in the column order both stores write: (session, turn,
    role, text, heard, language, confidence, timings JSON, created). Text is left out (NULL)
    when `store_text` is off."""
    def text(value: str | None) -> str | None:
        return value if store_text and value is not None else None

    rows: list[tuple[Any, ...]] = [(turn.session_id, turn.turn_id, "user", text(turn.user_text),
                                    None, turn.language, turn.confidence, "{}", now)]
    if turn.reply_text or turn.heard is not None:
        rows.append((turn.session_id, turn.turn_id, "assistant", text(turn.reply_text),
                     text(turn.heard), turn.language, None, json.dumps(turn.timings), now))
    return rows


def history_text(message: MessageRecord) -> str:
    """What a message contributes to the dialogue history: for a reply, what was heard."""
    if message.role == "assistant" and message.heard is not None:
        return message.heard
    return message.text or ""
