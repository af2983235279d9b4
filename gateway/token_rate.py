"""The token figures of a `turn.metrics` event: how many tokens the reply had and how fast they came.

`gateway.latency.TurnMetrics` gives the times from the end of the user's speech; this adds
what it does not: the reply's token count, tokens per second between its first and last
token, and `v2v_ms`, the first reply audio's time from the end
of the user's speech — the same origin as `first_audio_ms`, named as the metric
`inzwa_v2v_ms` is, and null for a typed turn (no speech to end).

The rate is read off the LLM worker's clock (`TokenChunk.elapsed_ms`), not off arrival times
here: tokens that waited in the plane's queues arrive in a burst (a busy host once made 17
tokens arrive in 1.2 ms: "14155 tokens/s"). A generation restarted elsewhere (a replay after a
worker died) starts its clock again, so only steps forward between two timed tokens count.
Tokens without a time (a fallback line, an older worker) fall back to arrival times.
"""

from __future__ import annotations

import time

from common.frames import Frame, TokenChunk


class TokenRate:
    def __init__(self) -> None:
        self._turn: int | None = None
        self._first: float | None = None
        self._last: float | None = None
        self._count = 0
        self._typed = False
        self._elapsed: float | None = None  # the last token's time on the worker's clock
        self._timed_steps = 0  # token-to-token steps measured on that clock...
        self._timed_ms = 0.0  # ...and their total

    def typed(self) -> None:
        """The next turn answers a typed message: it has no voice-to-voice time."""
        self._typed = True

    def observe(self, frame: Frame) -> None:
        if not isinstance(frame, TokenChunk) or not frame.token:
            return
        now = time.monotonic()
        if self._turn != frame.turn_id:  # a new reply: start counting again
            self._turn, self._first, self._count = frame.turn_id, now, 0
            self._elapsed, self._timed_steps, self._timed_ms = None, 0, 0.0
        self._count += 1
        self._last = now
        self._step(frame.elapsed_ms)

    def _step(self, elapsed: float | None) -> None:
        if elapsed is not None and self._elapsed is not None and elapsed >= self._elapsed:
            self._timed_steps += 1
            self._timed_ms += elapsed - self._elapsed
        self._elapsed = elapsed

    def _rate(self) -> float | None:
        if self._timed_steps and self._timed_ms > 0:
            return round(self._timed_steps / (self._timed_ms / 1000), 1)
        span = (self._last or 0.0) - (self._first or 0.0)
        return round((self._count - 1) / span, 1) if self._count > 1 and span > 0 else None

    def finish(self, turn_id: int, figures: dict[str, object]) -> dict[str, object]:
        """`figures` (TurnMetrics' event) with tokens, tokens_per_s and v2v_ms added."""
        ours = self._turn == turn_id
        count = self._count if ours else 0
        rate = self._rate() if ours else None
        typed, self._typed = self._typed, False
        if ours:
            self._turn = None
        return {**figures, "tokens": count, "tokens_per_s": rate,
                "v2v_ms": None if typed else figures.get("first_audio_ms")}
