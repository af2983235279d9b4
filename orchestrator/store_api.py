"""The orchestrator's side of the conversation store: resume, history, listing, erasure, retention.

Every answer is scoped by principal: a caller sees and erases only its own conversations (an
admin, vouched for by the gateway, any), and a session that is not the caller's is answered
exactly like one that does not exist.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from common.frames import (
    ChatMessage,
    Frame,
    HistoryReply,
    HistoryRequest,
    SessionDelete,
    SessionDeleted,
    SessionList,
    SessionListReply,
    SessionSummary,
    StoredMessage,
    TurnModelEntry,
)
from common.languages import registry as languages
from common.settings import Settings
from orchestrator.handoff_store import HandoffStore, infos
from orchestrator.session import Session
from orchestrator.store import ConversationStore, SessionRecord, StoreError, history_text

log = logging.getLogger(__name__)

PURGE_EVERY_S = 3600.0  # retention is in days: an hourly sweep is plenty
MAX_PAGE = 100
# The latest messages a history reply carries: well under the plane's message cap whatever the
# conversation's length (user texts are at most max_text_chars, replies max_new_tokens long).
MAX_STORED_MESSAGES = 200

Send = Callable[[str, Frame], object]


class Conversations:
    def __init__(self, settings: Settings, store: ConversationStore, sessions: dict[str, Session],
                 send: Send) -> None:
        self.settings = settings
        self.store = store
        self.sessions = sessions
        self.send = send
        self.purged_at = 0.0

    # --- start and resume ----------------------------------------------------------------------

    async def resume(self, session: Session) -> bool:
        """Give a starting session its stored history, if it has one and it is the starter's
        (a live session started again already carries its own). False: the id is someone
        else's (the start must be refused, saying no more)."""
        record = await self.store.get_session(session.session_id)
        if record is not None and record.principal != session.principal:
            return False
        if record is not None and not session.history:
            for message in await self.store.messages(session.session_id):
                text = history_text(message)
                if text and message.role in ("user", "assistant"):
                    session.keep(ChatMessage(message.role, text), message.turn_id)  # type: ignore[arg-type]
            while len(session.history) > 2 * session.history_turns:
                session.history.popleft()
            session.turns = max(session.turns, record.turns)
        await self.store.start_session(SessionRecord(session.session_id, session.principal,
                                                     session.language))
        return True

    # --- REST: history, list, delete -------------------------------------------------------------

    def _mine(self, principal: str, admin: bool, owner: str) -> bool:
        return admin or (bool(principal) and principal == owner)

    async def history(self, request: HistoryRequest, gateway_id: str) -> None:
        live = self.sessions.get(request.session_id)
        reply = HistoryReply(session_id=request.session_id, request_id=request.request_id)
        if live is not None and (
            self._mine(request.principal, request.admin, live.principal)
            or (not request.principal and live.gateway_id == gateway_id)  # an older gateway
        ):
            reply.found, reply.turns, reply.messages = True, live.turns, list(live.history)
            reply.language = live.language
        own = ""  # an ended session's own instructions, as stored
        if request.principal:  # (without one, an older asker: live sessions only, as before)
            own = await self._from_store(request, reply, live)
        if reply.found:
            reply.system_prompt = (self.settings.system_prompt
                                   or languages.get(reply.language or self.settings.language).system_prompt)
            if live is not None:  # with the client's own instructions (OpenAI Realtime)
                reply.system_prompt = live.system(reply.system_prompt)
            elif own:
                reply.system_prompt = f"{reply.system_prompt}\n\n{own}"
        self.send(gateway_id, reply)

    async def _from_store(self, request: HistoryRequest, reply: HistoryReply,
                          live: Session | None) -> str:
        """Fill the reply from the store; the ended session's own system prompt."""
        try:
            record = await self.store.get_session(request.session_id)
            if record is None or not self._mine(request.principal, request.admin, record.principal):
                return ""
            messages = await self.store.messages(request.session_id)
            models = await self.store.turn_models(request.session_id)
            handoffs = await HandoffStore(self.store).of_session(request.session_id)  # (handoff area)
            own = "" if live is not None else await self.store.system_prompt(request.session_id)
        except StoreError:
            log.exception("conversation store unavailable", extra={"session_id": request.session_id})
            return ""
        reply.found = True
        reply.session = _summary(record, live is not None)
        reply.stored_total = len(messages)
        reply.handoffs = infos(handoffs, live is not None)
        messages = messages[-MAX_STORED_MESSAGES:]
        reply.stored = [StoredMessage(
            m.turn_id, m.role, m.text, m.heard, m.language, m.confidence, m.timings, m.created,
            [TurnModelEntry(x.kind, x.name, x.version, x.sha256) for x in models.get(m.turn_id, [])]
            if m.role == "assistant" else []) for m in messages]
        if live is None:  # an ended session: the history a resume would start from
            reply.turns, reply.language = record.turns, record.language
            history = [ChatMessage(m.role, history_text(m)) for m in messages  # type: ignore[arg-type]
                       if history_text(m)]
            reply.messages = history[-2 * self.settings.history_turns:]
        return own

    async def list(self, request: SessionList, gateway_id: str) -> None:
        reply = SessionListReply(request_id=request.request_id)
        limit = max(1, min(request.limit, MAX_PAGE))
        try:
            records, reply.total = await self.store.list_sessions(
                None if request.admin else request.principal, limit, max(0, request.offset))
            reply.sessions = [_summary(r, r.session_id in self.sessions) for r in records]
        except StoreError as exc:
            reply.error = str(exc)
        self.send(gateway_id, reply)

    async def delete(self, request: SessionDelete,
                     end_live: Callable[[Session], Awaitable[None]]) -> SessionDeleted:
        """Erase a conversation (a live one is ended first, by `end_live`)."""
        reply = SessionDeleted(session_id=request.session_id, request_id=request.request_id)
        try:
            record = await self.store.get_session(request.session_id)
            live = self.sessions.get(request.session_id)
            owner = record.principal if record is not None else live.principal if live else None
            if owner is None or not self._mine(request.principal, request.admin, owner):
                return reply
            if live is not None:
                await end_live(live)
            reply.found = await self.store.delete_session(request.session_id) or live is not None
        except StoreError as exc:
            reply.error = str(exc)
        log.info("conversation erased", extra={"session_id": request.session_id, "found": reply.found})
        return reply

    # --- retention -------------------------------------------------------------------------------

    async def purge(self, *, force: bool = False) -> int:
        """Erase conversations past the retention period (at start, then hourly)."""
        now = time.time()
        if self.settings.retention_days <= 0 or (not force and now - self.purged_at < PURGE_EVERY_S):
            return 0
        self.purged_at = now
        try:
            count = await self.store.purge(now - self.settings.retention_days * 86400)
        except StoreError:
            log.exception("conversation store: retention purge failed")
            return 0
        if count:
            log.info("conversations past retention erased", extra={"count": count})
        return count


def _summary(record: SessionRecord, live: bool) -> SessionSummary:
    return SessionSummary(record.session_id, record.principal, record.language, record.created,
                          record.last_active, record.ended, record.end_reason, record.turns, live)
