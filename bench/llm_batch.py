"""The LLM under concurrent sessions: the single llama.cpp engine (one request at a time, the rest
queue, as the worker runs it) against the batched one (`llama-cpp-batched`, all in one decode).

`python -m bench.llm_batch`: for 1, 4 and 8 requests arriving together (short voice questions,
40 new tokens each, the default model and threads, temperature 0), the time from arrival to the
first piece (P50/P95 over 8 requests per setting) and each round's wall time. The engines take
turns round by round (a shared machine's load falls on both alike); before each round an engine
is warmed with the system prompt, as a worker is, so a request prefills its question only.
Writes bench/results/llm_batch.json (the previous run is kept as llm_batch.previous.json, with
ratios new / previous). `--stack` adds v2v (first reply audio after the end of speech) for 4 and 8
voice sessions at once through the real stack with each engine, every client staying for the
whole reply.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.keep import save_with_previous
from common.models import resolve
from common.settings import Settings
from llm_worker.interface import LLM, Messages

RESULTS = Path(__file__).resolve().parent / "results"
CONCURRENCY = (1, 4, 8)
REQUESTS = 8  # per setting: 8 rounds of 1, 2 rounds of 4, 1 round of 8
NEW_TOKENS = 40
SYSTEM = ("You are a friendly voice assistant. Answer in one or two short spoken sentences, "
          "without lists or markdown.")
QUESTIONS = [
    "What is the capital of Zimbabwe?", "How do I boil an egg?", "Why is the sky blue?",
    "What should I cook tonight?", "How far away is the moon?", "Can you recommend a good book?",
    "What time do banks usually open?", "How do I say thank you in Shona?",
]


def ask(question: str) -> Messages:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


async def one(engine: LLM, gate: asyncio.Semaphore, question: str, t0: float) -> dict[str, Any]:
    """One request as the worker serves it: it waits for a free generation slot."""
    first, pieces = None, 0
    async with gate:
        async for _ in engine.stream(ask(question), max_new_tokens=NEW_TOKENS):
            first = first if first is not None else time.perf_counter() - t0
            pieces += 1
    return {"ttft_ms": None if first is None else first * 1000, "pieces": pieces,
            "done_ms": (time.perf_counter() - t0) * 1000}


def figures(results: list[dict[str, Any]], walls: list[float]) -> dict[str, Any]:
    ttfts = [r["ttft_ms"] for r in results if r["ttft_ms"] is not None]
    pieces = sum(r["pieces"] for r in results)
    return {"requests": len(results), "ttft_ms_p50": round(float(np.percentile(ttfts, 50)), 1),
            "ttft_ms_p95": round(float(np.percentile(ttfts, 95)), 1),
            "round_wall_ms_p50": round(statistics.median(walls), 1),
            "pieces_per_s": round(pieces / (sum(walls) / 1000), 1)}


async def one_round(engine: LLM, asked: list[str]) -> tuple[list[dict[str, Any]], float]:
    await engine.warm(SYSTEM)
    gate = asyncio.Semaphore(max(1, engine.concurrency))
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(engine, gate, q, t0) for q in asked))
    return list(results), (time.perf_counter() - t0) * 1000


async def setting(named: dict[str, LLM], n: int) -> dict[str, dict[str, Any]]:
    """The engines take turns round by round, so a shared machine's load falls on both alike."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in named}
    walls: dict[str, list[float]] = {name: [] for name in named}
    for round_no in range(REQUESTS // n):
        asked = [QUESTIONS[(round_no * n + i) % len(QUESTIONS)] for i in range(n)]
        for name, engine in named.items():
            got, wall = await one_round(engine, asked)
            results[name] += got
            walls[name].append(wall)
    return {name: figures(results[name], walls[name]) for name in named}


def engines(settings: Settings) -> dict[str, LLM]:
    from llm_worker.engines.llama_cpp import LlamaCppEngine
    from llm_worker.engines.llama_cpp_batched import BatchedLlamaCppEngine

    path = resolve(settings.llm_model, settings.models_dir)
    return {
        "single": LlamaCppEngine.load(path, threads=settings.llm_threads, temperature=0.0),
        "batched": BatchedLlamaCppEngine.load(path, slots=max(CONCURRENCY), threads=settings.llm_threads,
                                              slot_context=settings.llm_batch_slot_context,
                                              temperature=0.0),
    }


async def run() -> dict[str, Any]:
    settings = Settings()
    report: dict[str, Any] = {"model": settings.llm_model, "threads": settings.llm_threads,
                              "new_tokens": NEW_TOKENS, "cpus": os.cpu_count(),
                              "load_before": os.getloadavg()[0]}
    named = engines(settings)
    for name in named:
        report[name] = {}
    for n in CONCURRENCY:
        for name, figs in (await setting(named, n)).items():
            report[name][str(n)] = figs
    report["load_after"] = os.getloadavg()[0]
    report["batched_over_single_ttft_p95"] = {
        n: round(report["batched"][n]["ttft_ms_p95"] / report["single"][n]["ttft_ms_p95"], 2)
        for n in report["single"]}
    return report


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    return {f"{name}_{n}_{key}": figures.get(key)
            for name in ("single", "batched") for n, figures in report.get(name, {}).items()
            for key in ("ttft_ms_p50", "ttft_ms_p95", "round_wall_ms_p50")}


def save(report: dict[str, Any]) -> dict[str, Any]:
    return save_with_previous(RESULTS / "llm_batch.json", report, _headline)


# --- `--stack`: the same two engines behind the real stack, voice turns end to end ---

STACK_ENGINES = {"single": {"INZWA_LLM_ENGINE": "llama-cpp"},
                 "batched": {"INZWA_LLM_ENGINE": "llama-cpp-batched", "INZWA_LLM_CONCURRENCY": "8"}}
# the overload ladder off for both: it would shorten or refuse the single engine's queued turns,
# hiding the queue this compares (with it on, the default, the single engine refuses at 8)
LADDER_OFF = {"INZWA_OVERLOAD_PARTIALS_AT": "0", "INZWA_OVERLOAD_SHORTER_AT": "0",
              "INZWA_OVERLOAD_REFUSE_AT": "0"}


async def voice_round(url: str, clips: list[bytes]) -> list[Any]:
    """Sessions at once, each streaming a question in real time and staying for the whole reply
    (a client that left at the first audio would cancel its reply and shorten the queue)."""
    from bench.latency import TAIL_S
    from gateway.client import Talker

    talkers = [Talker(pcm + b"\0" * int(TAIL_S * 32000), end_turn=False) for pcm in clips]
    return list(await asyncio.gather(*(t.run(url, timeout_s=120) for t in talkers)))


def stack_figures(env: dict[str, str], sessions: tuple[int, ...] = (4, 8),
                  rounds: int = 2) -> dict[str, Any]:
    import tempfile

    from bench.latency import clips
    from tests.stack import UNLIMITED, Stack

    pcms, out = list(clips().values()), {}
    with tempfile.TemporaryDirectory(prefix="inzwa-bench-llm-batch-") as run_dir:
        stack = Stack(Path(run_dir), **{**UNLIMITED, **LADDER_OFF, **env})
        try:
            stack.start()
            asyncio.run(voice_round(stack.url, pcms[:1]))  # warm every path once
            for n in sessions:
                turns = [t for r in range(rounds) for t in asyncio.run(
                    voice_round(stack.url, [pcms[(r * n + i) % len(pcms)] for i in range(n)]))]
                v2v = [t.v2v_ms for t in turns if t.v2v_ms is not None]
                out[str(n)] = {"turns": len(turns), "failed": len(turns) - len(v2v),
                               "v2v_ms_p50": round(float(np.percentile(v2v, 50)), 1) if v2v else None,
                               "v2v_ms_p95": round(float(np.percentile(v2v, 95)), 1) if v2v else None,
                               "load_avg_1m": round(os.getloadavg()[0], 2)}
        finally:
            stack.stop()
    return out


def main(argv: list[str]) -> None:
    report = asyncio.run(run())
    if "--stack" in argv:
        report["stack_v2v"] = {name: stack_figures(env) for name, env in STACK_ENGINES.items()}
    print(json.dumps(save(report), indent=2))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
