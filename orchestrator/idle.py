"""Idle sessions end (issue 13): a session with no audio and no message from its client for
`session_idle_s` is ended by the orchestrator itself and its live state freed.

The gateway has its own idle timeout on the socket, but the orchestrator cannot rely on hearing
about it (a lost SessionEnd, a gateway bug, a client of the plane that never says goodbye would
otherwise leave a session, its pinned workers and its audio buffer in memory forever). A session
whose reply is still being generated or played is not idle: the user is listening.
The conversation stays in the store; only the live state goes.
"""

from __future__ import annotations

from collections.abc import Iterable

from orchestrator.session import Session

IDLE_REASON = "idle_timeout"
# Reasons counted under their own name in inzwa_sessions_ended_total; any other (a gateway's
# close reason, free text) is counted as "client", so the label set stays bounded.
COUNTED_REASONS = frozenset({IDLE_REASON, "gateway_lost", "gateway_restarted", "deleted"})


def metric_reason(reason: str) -> str:
    return reason if reason in COUNTED_REASONS else "client"


def busy(session: Session) -> bool:
    """A reply still being generated or synthesized. (While it plays, the gateway's playback
    marks keep the session active; a turn whose end the gateway never confirms cannot hold it.)"""
    return session.turn is not None and session.turn.active


def idle_sessions(sessions: Iterable[Session], limit_s: float, now: float) -> list[Session]:
    """The sessions silent for longer than `limit_s` (none when the limit is 0: off)."""
    if limit_s <= 0:
        return []
    return [s for s in sessions if now - s.active_at > limit_s and not busy(s)]


def idle_message(limit_s: float) -> str:
    return f"no audio or messages for {limit_s:g} s; the session ended (its history is kept)"
