"""Voice-to-voice latency as the gateway sees it, for the metrics.

The ASR's timestamps count milliseconds of the session's audio; the gateway knows when each of
those milliseconds arrived. So the end of the user's speech (a final's `end_ms`) maps to a wall
time, and the first reply audio sent after it gives `inzwa_v2v_ms`.
"""

from __future__ import annotations

import bisect
import time

from common.frames import AudioChunk, Frame, TranscriptChunk
from common.metrics import ASR_PARTIAL_LATENCY_MS, V2V_MS

KEEP_MS = 120_000  # arrival times kept: longer than any utterance


class AudioClock:
    def __init__(self) -> None:
        self._ends_ms: list[int] = []  # audio ms at the end of each received frame
        self._arrived: list[float] = []
        self._received_ms = 0
        self._speech_end_at: float | None = None

    def received(self, nbytes: int) -> None:
        self._received_ms += nbytes // 32
        self._ends_ms.append(self._received_ms)
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
