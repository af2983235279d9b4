"""Voice-to-voice latency as the gateway sees it, for the metrics.

The ASR's timestamps count milliseconds of the session's audio; the gateway knows when each of
those milliseconds arrived. So the end of the user's speech (a final's `end_ms`) maps to a wall
time, and the first reply audio sent after it gives `inzwa_v2v_ms`.
"""

from __future__ import annotations

import bisect
import time

from common.frames import AudioChunk, Frame, TokenChunk, TranscriptChunk
from common.metrics import ASR_PARTIAL_LATENCY_MS, V2V_MS

KEEP_MS = 120_000  # arrival times kept: longer than any utterance


class AudioClock:
    def __init__(self) -> None:
        self._ends_ms: list[float] = []  # audio ms at the end of each received frame
        self._arrived: list[float] = []
        self._received_bytes = 0  # exact: chunks of any size (WebRTC's are not whole ms) add up
        self._speech_end_at: float | None = None

    def received(self, nbytes: int) -> None:
        self._received_bytes += nbytes
        self._ends_ms.append(self._received_bytes / 32)  # PCM16 at 16 kHz: 32 bytes a ms
        self._arrived.append(time.monotonic())
        if len(self._ends_ms) > 2 * KEEP_MS // 20:
            del self._ends_ms[: KEEP_MS // 20]
            del self._arrived[: KEEP_MS // 20]

    def arrival_of(self, audio_ms: int) -> float | None:
        index = bisect.bisect_left(self._ends_ms, audio_ms)
        return self._arrived[index] if index < len(self._arrived) else None

    def observe(self, frame: Frame) -> None:
        """Called for each frame as it goes to the client."""
        now = time.monotonic()
        if isinstance(frame, TranscriptChunk):
            arrived = self.arrival_of(frame.end_ms)
            if arrived is None:
                return
            if frame.is_final:
                self._speech_end_at = arrived
            else:
                ASR_PARTIAL_LATENCY_MS.observe((now - arrived) * 1000)
        elif isinstance(frame, AudioChunk) and frame.payload and self._speech_end_at is not None:
            V2V_MS.observe((now - self._speech_end_at) * 1000)
            self._speech_end_at = None


class TurnMetrics:
    """The `turn.metrics` event of each assistant turn, as the gateway saw it.

    The reference is the end of the user's speech on the gateway's receive clock (the final's
    `end_ms` mapped through the AudioClock), or, for a typed turn, when the text arrived: the
    same origin the person feels. Each figure is ms from there to the gateway seeing the
    asr.final, the turn's first llm.partial, and sending its first reply audio.
    """

    def __init__(self, clock: AudioClock) -> None:
        self.clock = clock
        self._typed_at: float | None = None
        self._reset(None)

    def _reset(self, reference: float | None) -> None:
        self._ref = reference
        self._turn: int | None = None  # the assistant turn answering the last final
        self._asr: float | None = None
        self._token: float | None = None
        self._audio: float | None = None

    def typed(self) -> None:
        """A text message went to the orchestrator; its echoed final starts the next turn."""
        self._typed_at = time.monotonic()

    def observe(self, frame: Frame) -> None:
        """Called for each frame as it goes to the client (reply audio included)."""
        now = time.monotonic()
        if isinstance(frame, TranscriptChunk) and frame.is_final:
            typed, self._typed_at = self._typed_at, None
            if typed is None:  # a typed turn's echo carries no audio times: no v2v sample
                self.clock.observe(frame)
            self._reset(typed if typed is not None else self.clock.arrival_of(frame.end_ms))
            self._asr = self._since(now)
            return
        if not (isinstance(frame, AudioChunk) and not frame.payload):
            self.clock.observe(frame)
        if isinstance(frame, TokenChunk) and self._token is None:
            self._turn, self._token = frame.turn_id, self._since(now)
        elif isinstance(frame, AudioChunk) and frame.payload and self._audio is None:
            self._audio = self._since(now)

    def _since(self, now: float) -> float | None:
        return None if self._ref is None else round((now - self._ref) * 1000, 1)

    def finish(self, turn_id: int, *, interrupted: bool) -> dict[str, object]:
        """The event for a turn that just ended (tts.end or tts.cancel)."""
        ours = self._turn in (None, turn_id)
        event: dict[str, object] = {
            "type": "turn.metrics", "turn_id": turn_id,
            "asr_final_ms": self._asr if ours else None,
            "first_token_ms": self._token if ours else None,
            "first_audio_ms": self._audio if ours else None,
            "interrupted": interrupted,
        }
        if ours:
            self._reset(None)
        return event
