"""Conversation store write latency for `make bench` (issue 13): one committed turn (both
messages, timings and the three models, one transaction) as the orchestrator writes it, with 4
sessions writing at once. SQLite by default (a temp file, WAL, as in production); a
`postgresql://` URL measures that store instead.

    python -m bench.store [--url postgresql://...] [--sessions 4] [--turns 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from common.settings import Settings
from orchestrator.store import ConversationStore, SessionRecord, TurnModel, TurnRecord, open_store

MODELS = [TurnModel("asr", "whisper-base", "1", "a" * 64), TurnModel("llm", "smollm2-135m", "1", "b" * 64),
          TurnModel("tts", "piper-en-us-joe-medium", "1", "c" * 64)]
TIMINGS = {"first_token": 180.0, "first_audio": 420.0, "tts_end": 2900.0}


def turn(session_id: str, turn_id: int) -> TurnRecord:
    return TurnRecord(session_id, turn_id, user_text="What is the weather like in Harare today?",
                      reply_text="It is sunny and warm in Harare, about twenty six degrees.",
                      language="en", confidence=0.93, timings=dict(TIMINGS), models=list(MODELS))


async def one_session(store: ConversationStore, turns: int, out: list[float]) -> None:
    session_id = str(uuid.uuid4())
    await store.start_session(SessionRecord(session_id, "bench"))
    for turn_id in range(1, turns + 1):
        started = time.perf_counter()
        await store.record_turn(turn(session_id, turn_id))
        out.append((time.perf_counter() - started) * 1000)
    await store.end_session(session_id, "bench")


async def measure(url: str, sessions: int, turns: int) -> dict[str, Any]:
    store = open_store(Settings(_env_file=None, db_url=url))  # type: ignore[call-arg]
    await store.open()
    latencies: list[float] = []
    try:
        started = time.perf_counter()
        await asyncio.gather(*(one_session(store, turns, latencies) for _ in range(sessions)))
        wall_s = time.perf_counter() - started
    finally:
        await store.close()
    return {"store": url.partition(":")[0], "sessions": sessions, "turns": len(latencies),
            "write_ms": {"p50": round(float(np.percentile(latencies, 50)), 2),
                         "p95": round(float(np.percentile(latencies, 95)), 2),
                         "max": round(max(latencies), 2)},
            "turns_per_s": round(len(latencies) / wall_s, 1)}


def store_figures(url: str = "", sessions: int = 4, turns: int = 100) -> dict[str, Any]:
    """Per-turn write latency with `sessions` writing at once (`url` empty: a temp SQLite file)."""
    if url:
        return asyncio.run(measure(url, sessions, turns))
    with tempfile.TemporaryDirectory(prefix="inzwa-bench-store-") as tmp:
        return asyncio.run(measure(f"sqlite:///{Path(tmp) / 'bench.db'}", sessions, turns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="", help="a database URL (default: a temp SQLite file)")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--turns", type=int, default=100, help="turns per session")
    args = parser.parse_args()
    print(json.dumps(store_figures(args.url, args.sessions, args.turns), indent=2))


if __name__ == "__main__":
    main()


def conversations_main() -> None:
    """`python -m bench --only-caches`: /v1/tts cold against cached on a stack of the real models,
    and the store's write latency; bench/results/conversations.json."""
    from bench.rest import cache_figures
    from tests.stack import Stack

    with tempfile.TemporaryDirectory(prefix="inzwa-bench-") as run_dir:
        stack = Stack(Path(run_dir))
        try:
            stack.start()
            figures = {"tts_cache": cache_figures(stack.http)}
        finally:
            stack.stop()
    figures["store"] = store_figures()  # with the stack stopped: the store's own cost
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "conversations.json").write_text(json.dumps(figures, indent=2))
    print_figures(figures)


def print_figures(figures: dict[str, Any]) -> None:
    cache, store = figures["tts_cache"], figures["store"]
    print(f"{'tts.cold_first_audio_ms':<40}{cache['cold_first_audio_ms']['p50']!s:>10}")
    print(f"{'tts.cached_first_audio_ms':<40}{cache['cached_first_audio_ms']['p50']!s:>10}")
    print(f"{'tts.cold_over_cached_ratio':<40}{cache['ratio_p50']!s:>10}")
    print(f"{'store.write_ms (' + str(store['sessions']) + ' sessions)':<40}"
          f"{store['write_ms']['p50']!s:>10}{store['write_ms']['p95']!s:>10}")
