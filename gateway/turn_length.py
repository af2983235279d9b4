"""How long the user's current turn has run, against `max_audio_seconds`.

A turn starts at the ASR's speech onset (its `VadEvent`, on the session's audio timeline), not
at the previous final: a person listening in silence to a long reply, or a page left open with
its microphone on, is in no turn and must not be told "that was a long turn". Manual turns (the
client commits each one) have no onset to wait for: all audio since the last commit counts.
"""

from __future__ import annotations

BYTES_PER_MS = 32  # PCM16 mono at 16 kHz


class TurnLength:
    def __init__(self, limit_s: float) -> None:
        self.limit_ms = limit_s * 1000
        self.received_ms = 0.0  # the session's audio timeline, as passed on to the ASR
        self.started_ms: float | None = None  # where the open turn began; None: no turn open

    def heard(self, nbytes: int, *, manual: bool = False) -> bool:
        """Audio passed on; True (once) when the open turn has just run past the limit."""
        if manual and self.started_ms is None:
            self.started_ms = self.received_ms
        self.received_ms += nbytes / BYTES_PER_MS
        return self._over()

    def speech_started(self, at_ms: float) -> bool:
        """The ASR heard speech begin at `at_ms`; True if that turn is already past the limit
        (audio sent faster than real time arrives before the ASR's word of it)."""
        if self.started_ms is None:
            self.started_ms = min(float(at_ms), self.received_ms)
        return self._over()

    def closed(self) -> None:
        """A final, a commit or a typed message closed the turn."""
        self.started_ms = None

    def _over(self) -> bool:
        if self.started_ms is None or self.received_ms - self.started_ms <= self.limit_ms:
            return False
        self.started_ms = None  # told once; the forced end of turn closes it
        return True
