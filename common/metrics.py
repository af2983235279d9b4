"""Prometheus metrics shared by all five processes, collected by the gateway's /metrics.

Each process writes its samples to files under PROMETHEUS_MULTIPROC_DIR (prometheus-client's
multiprocess mode, set by `inzwa run`), so one scrape of the gateway shows the whole
single-host stack. Without that variable the metrics still work, per process.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from common.frames import WORKER_KINDS

LATENCY_MS = (25, 50, 100, 200, 300, 400, 500, 600, 800, 1000, 1500, 2000, 3000, 5000, 10000)

SESSIONS_ACTIVE = Gauge(
    "inzwa_session_active", "WebSocket sessions open now", multiprocess_mode="livesum"
)
V2V_MS = Histogram(
    "inzwa_v2v_ms", "End of the user's speech to the first reply audio sent, ms", buckets=LATENCY_MS
)
ASR_PARTIAL_LATENCY_MS = Histogram(
    "inzwa_asr_partial_latency_ms", "Audio time of a partial's end to its sending, ms",
    buckets=LATENCY_MS,
)
LLM_TTFW_MS = Histogram(
    "inzwa_llm_ttfw_ms", "Generation request to the first token (word), ms", buckets=LATENCY_MS
)
TTS_RTF = Histogram(
    "inzwa_tts_rtf", "Synthesis time over audio duration, per phrase",
    buckets=(0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0),
)
WORKER_RESTARTS = Counter(
    "inzwa_worker_restarts_total", "Worker processes that died and were restarted", ["kind"]
)
RESTART_BUDGET_EXHAUSTED = Counter(
    "inzwa_restart_budget_exhausted_total", "Workers left down after too many restarts", ["kind"]
)
DROPPED_FRAMES = Counter(
    "inzwa_dropped_frames_total", "Frames not delivered, by reason", ["reason"]
)
# The ZeroMQ plane (plane area): connections its ZAP handler refused, by socket role.
PLANE_REFUSED = Counter(
    "inzwa_plane_refused_total", "Plane connections refused (unknown key or wrong role)", ["domain"]
)
REPLAYS = Counter(
    "inzwa_replays_total", "In-flight requests sent again after a worker was lost", ["kind"]
)
TTS_PHRASES = Counter(
    "inzwa_tts_phrases_total", "Phrases synthesized, by language and G2P", ["language", "g2p"]
)
# Text normalization (languages area): characters no reading rule covers, said as "symbol".
TTS_UNKNOWN_SYMBOLS = Counter(
    "inzwa_tts_unknown_symbols_total", "Characters with no reading rule, said as a symbol word",
    ["language"],
)
TURNS = Counter("inzwa_turns_total", "Reply turns, by outcome", ["outcome"])
# Caches (conversations area, issue 13): `cache` = audio (TTS phrases) | response
CACHE_HITS = Counter("inzwa_cache_hits_total", "Cache lookups answered from the cache", ["cache"])
CACHE_MISSES = Counter("inzwa_cache_misses_total", "Cache lookups not in the cache", ["cache"])
CACHE_EVICTIONS = Counter("inzwa_cache_evictions_total", "Entries dropped (TTL, LRU bounds)", ["cache"])
CACHE_BYTES = Gauge("inzwa_cache_bytes", "Bytes held in the cache", ["cache"], multiprocess_mode="livesum")
SESSIONS_ENDED = Counter("inzwa_sessions_ended_total", "Sessions the orchestrator ended, by reason",
                         ["reason"])  # idle_timeout, gateway_lost, gateway_restarted, deleted, client
MODEL_LOAD_MS = Histogram("inzwa_model_load_ms", "Time to load a model into a worker's LRU, ms",
                          ["kind"], buckets=LATENCY_MS)
MODELS_LOADED = Gauge("inzwa_models_loaded", "Models a worker holds loaded now", ["kind"],
                      multiprocess_mode="livesum")
TTS_FIRST_AUDIO_MS = Histogram(
    "inzwa_tts_first_audio_ms", "Synthesis request to its first audio frame (time to first audio), ms",
    buckets=LATENCY_MS,
)
HTTP_REQUESTS = Counter(
    "inzwa_http_requests_total", "Gateway HTTP and WebSocket requests, by route and status",
    ["route", "method", "status"],
)
HTTP_LATENCY_MS = Histogram(
    "inzwa_http_request_duration_ms", "Gateway request handling time (to the end of the body), ms",
    ["route"], buckets=LATENCY_MS,
)
RATE_LIMITED = Counter(
    "inzwa_rate_limited_total", "Requests refused by a rate limit or quota", ["limit"]
)
AUTH_FAILURES = Counter("inzwa_auth_failures_total", "Requests refused by auth", ["code"])
# Token-level latency (issue 14), measured in the LLM worker per generation request: every
# token's time since the request and since the token before it, the first token, the whole.
TOKEN_INTERVAL_MS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000)
LLM_TOKEN_INTERVAL_MS = Histogram(
    "inzwa_llm_token_interval_ms", "Time from one token to the next within a generation, ms",
    buckets=TOKEN_INTERVAL_MS,
)
LLM_TOKEN_SINCE_REQUEST_MS = Histogram(
    "inzwa_llm_token_since_request_ms", "Time from the generation request to each token, ms",
    buckets=LATENCY_MS,
)
LLM_FIRST_TOKEN_MS = Histogram(
    "inzwa_llm_first_token_ms", "Generation request to its first token, in the LLM worker, ms",
    buckets=LATENCY_MS,
)
LLM_TOTAL_MS = Histogram(
    "inzwa_llm_total_ms", "Generation request to its last token, ms", buckets=LATENCY_MS,
)
LLM_TOKENS = Counter("inzwa_llm_tokens_total", "Tokens generated (pieces sent by the LLM worker)")

# Human handoff (handoff area, issue 14): triggers that fired, by kind, and handoffs by outcome
# (requested, accepted, released, timeout, caller_left).
HANDOFF_TRIGGERS = Counter("inzwa_handoff_triggers_total", "Handoff triggers that fired, by kind", ["kind"])
HANDOFFS = Counter("inzwa_handoffs_total", "Handoffs to a human operator, by outcome", ["outcome"])

# Overload ladder (overload area, issue 15; orchestrator/overload.py): the level now (0 normal,
# 1 fewer partials, 2 shorter replies, 3 refusing new turns), how often each level was entered
# going up, and what it did: partials_off / partials_on (per session told), shorter_reply and
# refused (per turn).
OVERLOAD_LEVEL = Gauge("inzwa_overload_level", "Overload ladder level now (0-3)",
                       multiprocess_mode="livemax")
OVERLOAD_ENTERED = Counter("inzwa_overload_level_entered_total",
                           "Overload ladder levels entered on the way up, by level", ["level"])
OVERLOAD_ACTIONS = Counter("inzwa_overload_actions_total",
                           "What the overload ladder did, by action", ["action"])

DROP_REASONS = ("client_too_slow", "partial_skipped_congestion", "superseded_partial",
                # the plane: a peer's outbound queue was full / the peer did not take frames in
                # time (dead or stalled) / a frame for a session or gateway nobody may act on
                "peer_queue_full", "peer_unreachable", "unknown_session", "not_permitted")


def declare_series() -> None:
    """Create the labelled series a dashboard expects at zero, so "no restarts yet" reads as 0
    rather than as a missing metric (called once by the orchestrator)."""
    for kind in WORKER_KINDS:
        WORKER_RESTARTS.labels(kind)
        RESTART_BUDGET_EXHAUSTED.labels(kind)
        REPLAYS.labels(kind)
    for reason in DROP_REASONS:
        DROPPED_FRAMES.labels(reason)


def exposition() -> tuple[bytes, str]:
    """The body and content type of /metrics: every process's samples when multiprocess."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def process_exited(pid: int) -> None:
    """Forget a dead process's live gauges (its counters stay, as Prometheus expects)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
