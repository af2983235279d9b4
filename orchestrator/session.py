"""Per-session state: pinned workers, dialogue history and the reply turn in progress."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from common.frames import ChatMessage, Frame
from orchestrator.phrases import PhraseCutter

PHRASE_QUEUE = 8  # phrases waiting for TTS per session (the seed's bounded queues of 8)
TTS_WINDOW = 2  # phrases handed to the TTS worker at once: enough to keep it busy, cheap to cancel


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
    in_flight: dict[str, str] = field(default_factory=dict)  # request_id -> phrase text
    played: list[str] = field(default_factory=list)  # phrases the gateway says were heard
    phrases: int = 0
    llm_done: bool = False
    audio_started: bool = False
    audio_seq: int = 0
    token_seq: int = 0
    forwarded_all: bool = False  # tts.end sent: nothing more to generate or forward
    cancelled: bool = False
    closed: bool = False  # in the history; nothing more to do

    @property
    def active(self) -> bool:
        """Still generating or forwarding (frames for it are wanted)."""
        return not (self.cancelled or self.forwarded_all)

    def queue_phrase(self, phrase: str) -> None:
        """Bounded without loss: past the bound a phrase joins the last queued one."""
        if len(self.pending) >= PHRASE_QUEUE:
            self.pending[-1] = f"{self.pending[-1]} {phrase}"
        else:
            self.pending.append(phrase)

    @property
    def complete(self) -> bool:
        return self.llm_done and not self.pending and not self.in_flight


@dataclass
class Session:
    session_id: str
    reply_to: str
    language: str
    history_turns: int
    pins: dict[str, str] = field(default_factory=dict)  # kind -> instance_id
    history: deque[ChatMessage] = field(default_factory=deque)
    last_asr_utterance: int = 0
    turns: int = 0
    turn: Turn | None = None

    def remember(self, user_text: str, assistant_text: str) -> None:
        self.history.append(ChatMessage("user", user_text))
        if assistant_text:
            self.history.append(ChatMessage("assistant", assistant_text))
        while len(self.history) > 2 * self.history_turns:
            self.history.popleft()

    def prompt(self, system_prompt: str, user_text: str) -> list[ChatMessage]:
        return [ChatMessage("system", system_prompt), *self.history, ChatMessage("user", user_text)]
