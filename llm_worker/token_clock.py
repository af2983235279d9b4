"""Token-level latency of one generation request, as Prometheus histograms.

Measured in the LLM worker, where a token is born, from the request's arrival there (a wait
in the worker's queue counts): the orchestrator and the gateway see tokens after the plane's
queues, which would blur the intervals that tell a slow model from a slow hop. Each token adds
one sample of its time since the request (`inzwa_llm_token_since_request_ms`) and, from the
second on, one of its time since the token before (`inzwa_llm_token_interval_ms`); a request
adds one first-token and one total sample. So for a request of N tokens the counts grow by N,
N - 1, 1 and 1.
"""

from __future__ import annotations

import time

from common.metrics import (
    LLM_FIRST_TOKEN_MS,
    LLM_TOKEN_INTERVAL_MS,
    LLM_TOKEN_SINCE_REQUEST_MS,
    LLM_TOKENS,
    LLM_TOTAL_MS,
)


class TokenClock:
    def __init__(self, started: float | None = None) -> None:
        # `started`: when the request reached the worker (perf_counter), so a request that
        # waited in the queue behind another counts its wait; None: now.
        self.started = time.perf_counter() if started is None else started
        self.last: float | None = None
        self.tokens = 0

    def token(self) -> float:
        """One token was produced (call it as the piece leaves the engine); returns its ms since
        the request arrived."""
        now = time.perf_counter()
        since_request = (now - self.started) * 1000
        LLM_TOKEN_SINCE_REQUEST_MS.observe(since_request)
        if self.last is None:
            LLM_FIRST_TOKEN_MS.observe(since_request)
        else:
            LLM_TOKEN_INTERVAL_MS.observe((now - self.last) * 1000)
        LLM_TOKENS.inc()
        self.last = now
        self.tokens += 1
        return round(since_request, 2)

    def done(self) -> None:
        """The generation ended; a request that produced no token has no total to report."""
        if self.last is not None:
            LLM_TOTAL_MS.observe((self.last - self.started) * 1000)
