"""The optional LLM tier of the handoff triggers (`INZWA_HANDOFF_LLM_JUDGE`, off by default).

Only when the fast tier is unsure — the frustration classifier's P(frustrated) in
[handoff_llm_band, handoff_frustration_threshold) — the LLM worker gets a one-word
classification prompt about the caller's turn, beside (never before) the assistant's reply: the
reply is not delayed, and a "yes" that comes back starts the handoff (the reply is cut by the
handover phrase). Its request ids are its own (`<session>:judge:<n>`, turn 0), so its tokens never
reach the turn machinery or the client; an answer that does not come within request_timeout_s
is forgotten.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from common.frames import ChatMessage, Frame, GenerateRequest, TokenChunk, WorkerError, WorkerKind
from common.settings import Settings
from orchestrator.session import Session

ToWorker = Callable[[Session, WorkerKind, Frame], Awaitable[bool]]

PROMPT = ("You check calls to a voice assistant. Reply with one word, yes or no: does this caller "
          "want or need a human person now (they ask for one, are angry, or are stuck)?")
MAX_TOKENS = 3
_YES = re.compile(r"^\W*(yes|ndizvo|hongu)\b", re.IGNORECASE)


@dataclass
class Pending:
    session_id: str
    text: str  # the caller's turn (evidence for the firing)
    score: float  # the classifier's P(frustrated)
    asked_at: float
    answer: str = ""


class Judge:
    def __init__(self, settings: Settings, to_worker: ToWorker) -> None:
        self.settings = settings
        self.to_worker = to_worker
        self.pending: dict[str, Pending] = {}  # by request id
        self.asked = 0

    def unsure(self, score: float) -> bool:
        s = self.settings
        return s.handoff_llm_judge and s.handoff_llm_band <= score < s.handoff_frustration_threshold

    async def ask(self, session: Session, text: str, score: float) -> None:
        self.asked += 1
        request_id = f"{session.session_id}:judge:{self.asked}"
        self.pending[request_id] = Pending(session.session_id, text, score, time.monotonic())
        await self.to_worker(session, "llm", GenerateRequest(
            request_id=request_id, messages=[ChatMessage("system", PROMPT), ChatMessage("user", text)],
            max_new_tokens=MAX_TOKENS, language=session.language))

    def owns(self, request_id: str) -> bool:
        return request_id in self.pending

    def on_result(self, result: TokenChunk | WorkerError) -> Pending | None:
        """The judged turn when the LLM said yes (its last token in), else None."""
        pending = self.pending.get(result.request_id)
        if pending is None:
            return None
        if isinstance(result, WorkerError):
            del self.pending[result.request_id]  # no verdict: the fast tier's word stands
            return None
        pending.answer += result.token
        if not result.is_final:
            return None
        del self.pending[result.request_id]
        return pending if _YES.match(pending.answer) else None

    def expire(self, now: float) -> None:
        limit = self.settings.request_timeout_s
        for request_id in [r for r, p in self.pending.items() if now - p.asked_at > limit]:
            del self.pending[request_id]
