"""What a dead worker costs: a delay, never a lost or garbled turn.

When an instance is declared dead (the watchdog's instant notice, missed heartbeats, or a
restarted process announcing itself on the same endpoint), every session pinned to it moves to
another READY instance of the kind, or waits for the restarted one, and its in-flight work is
sent again:

- ASR: the current utterance's audio since its start (the orchestrator keeps it until the final
  transcript), after a SessionStart that places it in the session's timeline;
- LLM: the turn's prompt with the reply text already sent as a prefix to continue from;
- TTS: each phrase in flight; frames already forwarded are skipped when they come back.

Work that finds no instance waits; past `request_timeout_s` the client gets an error and the turn
ends rather than hanging.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from common.frames import WORKER_KINDS, ErrorEvent, Frame, SessionStart, WorkerKind
from common.metrics import REPLAYS

if TYPE_CHECKING:
    from orchestrator.registry import WorkerRegistry
    from orchestrator.session import Session
    from orchestrator.turns import Turns

log = logging.getLogger(__name__)

STALL_REPLAY_BYTES = 500 * 32  # the last 500 ms of PCM16 at 16 kHz


class Recovery:
    def __init__(
        self,
        sessions: dict[str, Session],
        registry: WorkerRegistry,
        turns: Turns,
        to_worker: Callable[[Session, WorkerKind, Frame], Awaitable[bool]],
        to_client: Callable[[Session, Frame], Awaitable[None]],
        timeout_s: float,
    ) -> None:
        self.sessions = sessions
        self.registry = registry
        self.turns = turns
        self.to_worker = to_worker
        self.to_client = to_client
        self.timeout_s = timeout_s
        self.replays: dict[WorkerKind, int] = dict.fromkeys(WORKER_KINDS, 0)
        self.stalls = 0

    async def lost(self, kind: WorkerKind, instance_id: str) -> None:
        for session in list(self.sessions.values()):
            if session.pins.get(kind) == instance_id:
                del session.pins[kind]
                await self.replay(session, kind)

    async def on_ready(self, kind: WorkerKind) -> None:
        for session in list(self.sessions.values()):
            if kind in session.needs_replay:
                await self.replay(session, kind)

    def wait_for(self, session: Session, kind: WorkerKind) -> None:
        """No instance of `kind` could take the session's work: wait for one."""
        session.needs_replay.add(kind)
        session.waiting_since.setdefault(kind, time.monotonic())

    async def replay(self, session: Session, kind: WorkerKind) -> None:
        if self.registry.pick(kind) is None:
            self.wait_for(session, kind)
            return
        session.needs_replay.discard(kind)
        session.waiting_since.pop(kind, None)
        self.replays[kind] += 1
        REPLAYS.labels(kind).inc()
        log.warning("replaying in-flight work", extra={"session_id": session.session_id, "kind": kind})
        if kind == "asr":
            await self._replay_asr(session)
        elif kind == "llm":
            await self.turns.replay_llm(session)
        elif kind == "tts":
            await self.turns.replay_tts(session)

    async def _replay_asr(self, session: Session) -> None:
        start = SessionStart(session_id=session.session_id, language=session.language,
                             offset_ms=session.audio_start_ms, pcm=bytes(session.audio),
                             principal=session.principal, gateway_id=session.gateway_id,
                             silence_ms=session.silence_ms, manual_turns=session.manual)
        await self.to_worker(session, "asr", start)

    async def check_asr_stall(self, session: Session, stall_s: float) -> None:
        """Speech is under way and audio keeps coming, but the ASR has said nothing for
        `stall_s`: reset its decoder for this session and replay the last 500 ms."""
        now = time.monotonic()
        if not session.speech_open or now - session.audio_at > 1.0:
            return
        if now - session.asr_heard_at < stall_s:
            return
        log.warning("asr stalled: resetting the session's decoder",
                    extra={"session_id": session.session_id})
        self.stalls += 1
        session.asr_heard_at = now
        session.speech_open = False
        tail = bytes(session.audio[-STALL_REPLAY_BYTES:])
        offset = session.audio_start_ms + (len(session.audio) - len(tail)) // 32
        # A SessionStart for a session the ASR has resets it: a fresh decoder and VAD.
        start = SessionStart(session_id=session.session_id, language=session.language,
                             offset_ms=offset, pcm=tail, principal=session.principal,
                             gateway_id=session.gateway_id, silence_ms=session.silence_ms,
                             manual_turns=session.manual)
        await self.to_worker(session, "asr", start)

    async def retry_waits(self) -> None:
        """Replay work that waits on a kind whose instance for it takes frames again: a worker
        that stalled long enough for a send to time out comes back without a new READY, so
        `on_ready` alone would leave its sessions waiting until `expire_waits` failed them."""
        for session in list(self.sessions.values()):
            for kind in sorted(session.needs_replay):
                # (the instance the replay would go to: the pinned one while it lives)
                instance = self.registry.serving(kind, session.pins.get(kind))
                if instance is not None and instance.sender.reachable:
                    await self.replay(session, kind)

    async def expire_waits(self) -> None:
        """Work that waited too long for an instance ends with an error, not a hang."""
        horizon = time.monotonic() - self.timeout_s
        for session in list(self.sessions.values()):
            for kind, since in list(session.waiting_since.items()):
                if since < horizon:
                    session.waiting_since.pop(kind)
                    session.needs_replay.discard(kind)
                    await self.turns.cancel(session, tell_client=True)
                    await self.to_client(session, ErrorEvent(
                        code=f"{kind}_unavailable", message=f"no {kind} worker is available; try again"))
