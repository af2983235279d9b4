"""Per-session state: pinned workers, dialogue history and the reply turn in progress."""

from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass, field

from common.frames import ChatMessage, Frame, GenerateRequest, WorkerKind
from orchestrator.phrases import PhraseCutter

BYTES_PER_MS = 32  # PCM16 mono at 16 kHz
PHRASE_QUEUE = 8  # phrases waiting for TTS per session (the seed's bounded queues of 8)
TTS_WINDOW = 2  # phrases handed to the TTS worker at once: enough to keep it busy, cheap to cancel


@dataclass
class Phrase:
    """A phrase handed to TTS. After a replay, `skip` frames were already forwarded."""

    text: str
    skip: int = 0
    forwarded: int = 0


class TurnState(enum.Enum):
    """A reply turn's lifecycle. Only forward: GENERATING -> SYNTHESIZING -> FORWARDED -> DONE,
    or CANCELLED from any state before DONE."""

    GENERATING = "generating"  # the LLM is still producing tokens
    SYNTHESIZING = "synthesizing"  # all text is in; phrases are being synthesized and forwarded
    FORWARDED = "forwarded"  # tts.end sent: nothing more to generate or forward
    DONE = "done"  # the gateway says the audio was sent: in the history
    CANCELLED = "cancelled"  # interrupted (what was heard is in the history) or discarded


@dataclass
class Turn:
    turn_id: int
    user_text: str
    request_id: str
    speculative: bool = False  # an early reply: frames are held until the final transcript
    cutter: PhraseCutter = field(default_factory=PhraseCutter)
    held: list[Frame] = field(default_factory=list)
    reply_text: str = ""
    pending: deque[str] = field(default_factory=deque)
    accepted: list[str] = field(default_factory=list)  # phrases that passed the output filter
    in_flight: dict[str, Phrase] = field(default_factory=dict)  # by TTS request_id
    request: GenerateRequest | None = None  # kept until the LLM's final token, for replay
    attempts: int = 1
    progress_at: float = field(default_factory=time.monotonic)  # start, or the last token
    started_at: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)  # ms since start, for the logs
    played: list[str] = field(default_factory=list)  # phrases the gateway says were heard
    phrases: int = 0
    state: TurnState = TurnState.GENERATING
    audio_started: bool = False  # tts.start was sent (the client has heard something)
    audio_seq: int = 0
    token_seq: int = 0
    confidence: float | None = None  # the ASR's, for a spoken turn
    fallback: str = ""  # a fallback reply's reason (llm_timeout, unavailable, cannot_help): handoff signal
    stopped: bool = False  # the client stopped it (Realtime response.cancel): later heard marks count
    stored: bool = False  # written to the conversation store (a later interruption updates it)

    def mark(self, event: str) -> None:
        self.timings.setdefault(event, round((time.monotonic() - self.started_at) * 1000, 1))

    def to(self, state: TurnState) -> None:
        """Move forward to `state` (a turn never goes back; a closed turn stays closed)."""
        if not self.closed and _ORDER.index(state) > _ORDER.index(self.state):
            self.state = state

    @property
    def llm_done(self) -> bool:
        return self.state is not TurnState.GENERATING

    @property
    def cancelled(self) -> bool:
        return self.state is TurnState.CANCELLED

    @property
    def closed(self) -> bool:
        """In the history (or discarded): nothing more to do."""
        return self.state in (TurnState.DONE, TurnState.CANCELLED)

    @property
    def active(self) -> bool:
        """Still generating or forwarding (frames for it are wanted)."""
        return self.state in (TurnState.GENERATING, TurnState.SYNTHESIZING)

    def queue_phrase(self, phrase: str) -> None:
        """Bounded without loss: past the bound a phrase joins the last queued one."""
        if len(self.pending) >= PHRASE_QUEUE:
            self.pending[-1] = f"{self.pending[-1]} {phrase}"
        else:
            self.pending.append(phrase)

    @property
    def complete(self) -> bool:
        return self.llm_done and not self.pending and not self.in_flight


_ORDER = list(TurnState)


@dataclass
class Session:
    session_id: str
    gateway_id: str  # the gateway holding the client: answered there, and only it may act
    language: str
    history_turns: int
    max_new_tokens: int = 80
    principal: str = ""  # who opened it: another principal cannot take it over
    pins: dict[WorkerKind, str] = field(default_factory=dict)  # kind -> instance_id
    history: deque[ChatMessage] = field(default_factory=deque)
    turns: int = 0
    turn: Turn | None = None
    # The current utterance's audio, kept until its final transcript so that it can be replayed
    # to another ASR instance; `audio_start_ms` is its place in the session's audio timeline.
    audio: bytearray = field(default_factory=bytearray)
    audio_start_ms: int = 0
    speech_open: bool = False  # the ASR saw speech start and has not given its final yet
    asr_heard_at: float = field(default_factory=time.monotonic)  # its last frame for us
    audio_at: float = 0.0  # the client's last audio
    active_at: float = field(default_factory=time.monotonic)  # last audio or message (idle GC)
    needs_replay: set[WorkerKind] = field(default_factory=set)  # kinds waiting for an instance
    waiting_since: dict[WorkerKind, float] = field(default_factory=dict)
    fallbacks: int = 0  # fallback replies in a row (a handoff trigger, orchestrator/triggers.py)
    system_prompt: str = ""  # the client's own (OpenAI Realtime instructions); empty: the server's
    silence_ms: int = 0  # the client's end-of-turn silence for the ASR; 0: the ASR's default
    speed: float = 1.0  # the client's speaking rate for the replies (OpenAI Realtime)
    # What each history message is, (turn id, role), so that a client can delete one (OpenAI
    # Realtime conversation.item.delete); kept beside `history` by `remember` and `keep`.
    keys: deque[tuple[int, str]] = field(default_factory=deque)
    added: dict[str, int] = field(default_factory=dict)  # a gateway's item id -> its turn (HistoryAdd)
    manual: bool = False  # manual turns: a user turn is answered only when the client asks
    held: list[str] = field(default_factory=list)  # ... and its words wait here until then
    awaiting_final: bool = False  # the client ended a manual turn: its final transcript is due
    respond_after: tuple[str, str] | None = None  # a reply asked before that final: (text, instructions)
    stored_prompt: str = ""  # the system_prompt the store has for it

    def keep_audio(self, pcm: bytes, max_bytes: int) -> None:
        self.audio.extend(pcm)
        excess = len(self.audio) - max_bytes
        if excess > 0:
            excess += -excess % BYTES_PER_MS  # whole milliseconds: the timeline stays exact
            del self.audio[:excess]
            self.audio_start_ms += excess // BYTES_PER_MS

    def audio_heard_until(self, end_ms: int) -> None:
        """A final transcript covered the audio up to `end_ms`: it needs no replay any more."""
        # What stays here is what a replay sends again: an utterance left here after its final
        # would be heard, and answered, a second time.
        cut = max(0, min(len(self.audio), (end_ms - self.audio_start_ms) * BYTES_PER_MS))
        cut -= cut % BYTES_PER_MS
        del self.audio[:cut]
        self.audio_start_ms += cut // BYTES_PER_MS

    def remember(self, user_text: str, assistant_text: str, turn_id: int = 0) -> None:
        if user_text:  # (an operator may speak first during a handoff: no user words before it)
            self.keep(ChatMessage("user", user_text), turn_id)
        if assistant_text:
            self.keep(ChatMessage("assistant", assistant_text), turn_id)

    def keep(self, message: ChatMessage, turn_id: int) -> None:
        """A message joins the history, keyed by its turn (0: none a client can name)."""
        self._align()
        self.history.append(message)
        self.keys.append((turn_id, message.role))
        while len(self.history) > 2 * self.history_turns:
            self.history.popleft()
            self.keys.popleft()

    def _align(self) -> None:
        """`keys` matches `history` message for message (a history set whole, as a resumed or
        restarted session's, has keys for none of its messages: they get (0, ""))."""
        while len(self.keys) > len(self.history):
            self.keys.popleft()
        while len(self.keys) < len(self.history):
            self.keys.appendleft((0, ""))

    def forget(self, turn_id: int, role: str) -> bool:
        """Delete the `role` message of turn `turn_id` from the history; False if none."""
        self._align()
        for index, key in enumerate(self.keys):
            if turn_id and key == (turn_id, role):
                del self.history[index]
                del self.keys[index]
                return True
        return False

    def prompt(self, system_prompt: str, user_text: str, instructions: str = "") -> list[ChatMessage]:
        """System text first (the server's prompt, the client's instructions, system items the
        client added, this reply's own instructions: chat templates want one system message,
        first), then the dialogue, then the user's words (none: the assistant speaks first)."""
        notes = [m.content for m in self.history if m.role == "system"]
        system = "\n\n".join([self.system(system_prompt), *notes, *([instructions] if instructions else [])])
        said = [m for m in self.history if m.role != "system"]
        asked = [ChatMessage("user", user_text)] if user_text else []
        return [ChatMessage("system", system), *said, *asked]

    def system(self, server_prompt: str) -> str:
        """The server's prompt first, always; the client's own instructions below it, never
        replacing it (as a REST chat's system messages: orchestrator/jobs.py)."""
        return f"{server_prompt}\n\n{self.system_prompt}" if self.system_prompt else server_prompt

    def amend_reply(self, heard: str) -> None:
        """The last turn's reply as heard, corrected: a client that stopped a reply says how
        much of it was heard only afterwards (OpenAI Realtime response.cancel, then truncate)."""
        self._align()
        key = (0, "assistant")
        if self.history and self.history[-1].role == "assistant":
            self.history.pop()
            key = self.keys.pop()
        if heard:
            self.keep(ChatMessage("assistant", heard), key[0])
