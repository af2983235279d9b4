"""What a client does to the dialogue besides speaking (OpenAI Realtime, gateway/realtime.py).

- `HistoryAdd`: a message of any role joins the history without a reply (frameworks such as
  LiveKit Agents and pipecat sync their chat context with `conversation.item.create`). It gets a
  turn id of its own, so it is stored (user and assistant messages) and can be deleted.
- `HistoryDelete`: a message leaves the history the LLM sees and the stored conversation.
- `Respond`: a reply now (`response.create`): to the user's words held in manual turns and any
  typed text, or with none from the history alone (the assistant speaks first), with this
  reply's own instructions. Asked before the final transcript of a manual turn the client just
  ended, it waits for that final (the ASR sends one, empty if it heard nothing).
- `ClearAudio`: the ASR drops the audio it has not transcribed yet, and so does the replay copy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from common.frames import (
    ChatMessage,
    ClearAudio,
    Frame,
    HistoryAdd,
    HistoryDelete,
    Respond,
    TranscriptChunk,
    WorkerKind,
)
from orchestrator.session import BYTES_PER_MS, Session
from orchestrator.store import ConversationStore, StoreError, TurnRecord
from orchestrator.turns import Turns

log = logging.getLogger(__name__)

ClientFrame = HistoryAdd | HistoryDelete | Respond | ClearAudio
ToWorker = Callable[[Session, WorkerKind, Frame], Awaitable[bool]]
ToClient = Callable[[Session, Frame], Awaitable[None]]
UserTurn = Callable[[Session, str, float | None], Awaitable[bool]]  # True: a handoff took it
ROLES = ("user", "assistant", "system")
MAX_ADDED = 1000  # item ids remembered per session (a client adding more forgets the oldest)
# How long a reply asked for waits for its manual turn's final: the ASR sends one for every end
# of turn, so this is only for one that never comes (its ASR died mid-turn): then the words held.
FINAL_WAIT_S = 10.0
MAX_HELD = 20  # a manual turn's finals held (each one utterance, bounded): past it the oldest go


class ClientTurns:
    def __init__(self, turns: Turns, store: ConversationStore, to_worker: ToWorker,
                 to_client: ToClient, user_turn: UserTurn, sessions: dict[str, Session]) -> None:
        self.sessions = sessions
        self._waits: set[asyncio.Task[None]] = set()
        self.turns = turns
        self.store = store
        self.to_worker = to_worker
        self.to_client = to_client
        self.user_turn = user_turn

    async def handle(self, session: Session, frame: ClientFrame) -> None:
        match frame:
            case HistoryAdd():
                await self.add(session, frame)
            case HistoryDelete():
                await self.delete(session, frame)
            case Respond():
                await self.respond(session, frame.text, frame.instructions)
            case ClearAudio():
                await self.clear(session)

    async def add(self, session: Session, frame: HistoryAdd) -> None:
        text = frame.text.strip()
        if frame.role not in ROLES or not text:
            return
        session.turns += 1
        turn_id = session.turns
        session.keep(ChatMessage(frame.role, text), turn_id)  # type: ignore[arg-type]
        if frame.item_id:
            session.added[frame.item_id] = turn_id
            while len(session.added) > MAX_ADDED:
                del session.added[next(iter(session.added))]
        if frame.role == "system":
            return  # (system items live with the session, as its instructions do)
        user, reply = (text, "") if frame.role == "user" else ("", text)
        try:
            await self.store.record_turn(TurnRecord(session.session_id, turn_id, user, reply,
                                                    language=session.language))
        except StoreError:
            log.exception("conversation store: added message not written",
                          extra={"session_id": session.session_id, "turn_id": turn_id})

    async def delete(self, session: Session, frame: HistoryDelete) -> None:
        turn_id = session.added.pop(frame.item_id, 0) if frame.item_id else frame.turn_id
        if not turn_id:
            if frame.role == "user":
                session.held.clear()  # words of a manual turn nobody asked a reply to yet
            return
        turn = session.turn
        if turn is not None and turn.turn_id == turn_id and not turn.closed:
            if frame.role == "user":
                turn.user_text = ""  # its reply goes on; the question is not remembered
            else:
                await self.turns.stop(session, turn_id)  # what was heard is remembered, then goes
        session.forget(turn_id, frame.role)
        await self.turns.flush()  # a write of that turn still under way lands first
        try:
            await self.store.delete_message(session.session_id, turn_id, frame.role)
        except StoreError:
            log.exception("conversation store: message not deleted",
                          extra={"session_id": session.session_id, "turn_id": turn_id})

    async def respond(self, session: Session, text: str, instructions: str) -> None:
        if session.manual and session.awaiting_final:
            wanted = session.respond_after = (text, instructions)  # its words are still on their way
            task = asyncio.get_running_loop().create_task(self._wait_for_final(session, wanted))
            self._waits.add(task)
            task.add_done_callback(self._waits.discard)
            return
        turn = session.turn
        if turn is not None and not turn.closed and not turn.speculative and not text and not session.held:
            return  # a reply is under way already and nothing new was said: it is the one asked for
        words = " ".join([*session.held, text]).strip()
        session.held.clear()
        if text:  # shown as the user's final words, as a typed turn's are (service._on_text)
            await self.to_client(session, TranscriptChunk(
                text=text, is_final=True, confidence=1.0, language=session.language,
                turn_id=session.turns + 1))
        if words and await self.user_turn(session, words, None):
            return  # a handoff took it
        await self.turns.start(session, words, instructions=instructions)

    async def on_final(self, session: Session, chunk: TranscriptChunk) -> None:
        """A final transcript in manual turns: held until the client asks for the reply."""
        session.awaiting_final = False
        if chunk.text.strip():
            session.held.append(chunk.text.strip())
            del session.held[:-MAX_HELD]
        wanted, session.respond_after = session.respond_after, None
        if wanted is not None:
            await self.respond(session, *wanted)

    async def configured(self, session: Session) -> None:
        """The session's own system prompt is stored, to be shown after the session ends."""
        if session.system_prompt == session.stored_prompt:
            return
        try:
            await self.store.set_system_prompt(session.session_id, session.system_prompt)
            session.stored_prompt = session.system_prompt
        except StoreError:
            log.exception("conversation store: system prompt not written",
                          extra={"session_id": session.session_id})

    async def _wait_for_final(self, session: Session, wanted: tuple[str, str]) -> None:
        await asyncio.sleep(FINAL_WAIT_S)
        if self.sessions.get(session.session_id) is session and session.respond_after is wanted:
            log.warning("no final transcript for a manual turn: replying to the words held",
                        extra={"session_id": session.session_id})
            await self.on_final(session, TranscriptChunk(is_final=True))

    async def clear(self, session: Session) -> None:
        whole = len(session.audio) - len(session.audio) % BYTES_PER_MS  # (a part of a ms stays)
        session.audio_start_ms += whole // BYTES_PER_MS  # (as keep_audio counts)
        del session.audio[:whole]  # (no replay of it to another ASR either)
        session.speech_open = False
        await self.to_worker(session, "asr", ClearAudio(session_id=session.session_id))
