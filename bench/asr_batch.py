"""Batched Whisper decoding across sessions against one decode at a time (`python -m bench.asr_batch`).

N sessions' finals arrive together (or spread over `--spreads-ms`), as when N people stop talking
at about the same moment; each is a fixture clip (English and Shona, 1.8-5.7 s): "mixed" is all
ten, "same-key" the four that share a batch key, "partials" the first 1-4 s of the clips (what a
partial decodes while the speaker goes on), spread over 300 ms. "sequential" is
the engine as the worker used it before: N threads, the engine's lock takes them one at a time.
"batched" is the same engine behind `asr_worker.batching.BatchingAsr` with the configured window
and maximum. Rounds alternate the two modes so machine load falls on both alike.

Writes bench/results/asr_batch.json (the previous run kept as asr_batch.previous.json): per
concurrency and arrival pattern, wall time per round and per-call latency P50/P95 for each mode,
the batch sizes the batcher formed, and whether every clip got the same text in both modes.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from asr_worker.batching import BatchingAsr
from asr_worker.interface import Transcription
from bench import FIXTURES, ROOT
from bench.keep import save_with_previous
from common.audio import pcm16_to_float, read_wav
from common.settings import Settings

RESULTS = ROOT / "bench" / "results" / "asr_batch.json"
STACK_RESULTS = RESULTS.with_name("asr_batch_stack.json")
CLIPS = ("q_en_capital.wav", "q_en_weather.wav", "q_en_long.wav", "q_sn_greeting.wav",
         "q_sn_weather.wav", "LJ001-0002.wav", "LJ001-0004.wav", "LJ001-0006.wav",
         "LJ001-0008.wav", "LJ001-0013.wav")
# The clips of one batch key (5 s padded, no prompt): the most a batch can gain, as when several
# people ask short questions at once. The mixed set spans 4 padded lengths and 2 prompt shapes.
SAME_KEY = ("q_en_weather.wav", "LJ001-0002.wav", "LJ001-0008.wav", "LJ001-0013.wav")

Clip = tuple[str, np.ndarray, str]  # name, audio, language
Transcribe = Callable[[np.ndarray, str], Transcription]


def load_clips(names: Sequence[str]) -> list[Clip]:
    return [(name, pcm16_to_float(read_wav(FIXTURES / name)[0]), "sn" if "_sn_" in name else "en")
            for name in names]


def partial_clips(clips: list[Clip], count: int = 20) -> list[Clip]:
    """What partials decode: the first 1-4 s of an utterance still being spoken (seeded)."""
    rng = random.Random(7)
    picked = [clips[k % len(clips)] for k in range(count)]
    cut = [(name, audio[: int(rng.uniform(1.0, 4.0) * 16000)], language)
           for name, audio, language in picked]
    return [(f"{name}@{k}", audio, language) for k, (name, audio, language) in enumerate(cut)]


def run_round(transcribe: Transcribe, clips: Sequence[Clip], offsets_s: Sequence[float]
              ) -> tuple[float, list[float], dict[str, str]]:
    """All calls start together (a barrier), each after its offset: wall s, latencies ms, texts."""
    barrier = threading.Barrier(len(clips))
    spans: list[tuple[float, float]] = []
    texts: dict[str, str] = {}

    def call(index: int) -> None:
        name, audio, language = clips[index]
        barrier.wait()
        time.sleep(offsets_s[index])
        start = time.perf_counter()
        texts[name] = transcribe(audio, language).text
        spans.append((start, time.perf_counter()))

    with ThreadPoolExecutor(max_workers=len(clips)) as pool:
        list(pool.map(call, range(len(clips))))
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return wall, [(end - start) * 1000 for start, end in spans], texts


def _pct(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


def _summary(walls: list[float], latencies: list[float]) -> dict[str, Any]:
    return {"wall_ms_p50": _pct([w * 1000 for w in walls], 50),
            "latency_ms_p50": _pct(latencies, 50), "latency_ms_p95": _pct(latencies, 95),
            "latency_ms_mean": round(float(np.mean(latencies)), 1), "calls": len(latencies)}


def measure(engine: Any, batcher: BatchingAsr, clips: list[Clip], concurrency: int,
            spread_ms: float, rounds: int) -> dict[str, Any]:
    """Rounds of `concurrency` calls, each round in both modes, the first mode alternating."""
    rng = random.Random(concurrency * 1000 + int(spread_ms))  # same arrivals for both modes
    modes: dict[str, Callable[..., Transcription]] = {"sequential": engine.transcribe,
                                                      "batched": batcher.transcribe}
    walls: dict[str, list[float]] = {mode: [] for mode in modes}
    latencies: dict[str, list[float]] = {mode: [] for mode in modes}
    same_text = True
    batcher.batch_sizes.clear()
    for round_index in range(rounds):
        picked = [clips[(round_index * concurrency + k) % len(clips)] for k in range(concurrency)]
        offsets = [rng.uniform(0, spread_ms / 1000) for _ in picked]
        heard: dict[str, dict[str, str]] = {}
        for mode in sorted(modes, reverse=round_index % 2 == 1):
            wall, took, heard[mode] = run_round(modes[mode], picked, offsets)
            walls[mode].append(wall)
            latencies[mode].extend(took)
        same_text = same_text and heard["sequential"] == heard["batched"]
    result = {mode: _summary(walls[mode], latencies[mode]) for mode in modes}
    stats = batcher.stats()
    return {"concurrency": concurrency, "spread_ms": spread_ms, "rounds": rounds, **result,
            "batch_sizes": {str(k): v for k, v in stats["sizes"].items()},
            "waited_for_window": stats["waited"], "same_text": same_text,
            "speedup_p50": round(result["sequential"]["latency_ms_p50"]
                                 / result["batched"]["latency_ms_p50"], 2)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--spreads-ms", default="0,300", help="arrivals spread over this window")
    parser.add_argument("--rounds", type=int, default=6, help="per row; 3x that for 1 session")
    parser.add_argument("--stack", action="store_true",
                        help="only the real stack's v2v, batching off and on (minutes)")
    parser.add_argument("--stack-order", default="off,on,on,off", help="one stack per entry")
    args = parser.parse_args(argv)
    if args.stack:
        report = stack_figures(order=args.stack_order.split(","))
        return _save(STACK_RESULTS, report, lambda report: print(json.dumps(report)))
    from asr_worker.engines import whisper

    settings = Settings()
    engine = whisper.create(settings)  # as the worker loads it: language packs' prompts too
    engine.warmup()
    batcher = BatchingAsr(engine, window_ms=settings.asr_batch_window_ms,
                          max_batch=settings.asr_batch_max)
    mixed, same_key = load_clips(CLIPS), load_clips(SAME_KEY)
    rows = [{"clips": "mixed", **measure(engine, batcher, mixed, int(n), float(spread),
                                         args.rounds * (3 if n == "1" else 1))}
            for spread in args.spreads_ms.split(",") for n in args.concurrency.split(",")]
    rows += [{"clips": "same-key", **measure(engine, batcher, same_key, int(n), 0.0, args.rounds)}
             for n in args.concurrency.split(",") if n != "1"]
    rows += [{"clips": "partials", **measure(engine, batcher, partial_clips(mixed), int(n), 300.0,
                                             args.rounds)}
             for n in args.concurrency.split(",") if n != "1"]
    report = {"machine": {"python": platform.python_version(), "cpu": platform.processor(),
                          "asr_threads": settings.asr_threads},
              "model": settings.asr_model, "window_ms": settings.asr_batch_window_ms,
              "max_batch": settings.asr_batch_max, "rows": rows}
    return _save(RESULTS, report, lambda report: _print(report["rows"]))


def _save(path: Path, report: dict[str, Any], show: Callable[[dict[str, Any]], None]
          ) -> dict[str, Any]:
    save_with_previous(path, report)  # the previous run stays beside it, for a ratio by eye
    show(report)
    return report


def stack_figures(sessions: Sequence[int] = (4, 8), rounds: int = 2,
                  order: Sequence[str] = ("off", "on", "on", "off")) -> dict[str, Any]:
    """The whole five-process stack with INZWA_ASR_BATCH_WINDOW_MS=0 ("off") or the default
    ("on"): v2v and ASR final latency from the acoustic end of speech, N sessions at once
    (bench/latency.py's measurement, reused). One stack per entry of `order`, one after the
    other (off, on, on, off: load drift on this shared machine falls on both alike)."""
    runs: list[dict[str, Any]] = []
    for label in order:
        window = "0" if label == "off" else str(Settings().asr_batch_window_ms)
        runs.append({"batching": label, **_stack_run(window, sessions, rounds)})
    summary = {label: {str(n): {f"{figure}_{q}": _mean_of_runs(runs, label, n, figure, q)
                                for figure in ("v2v_ms", "asr_final_ms") for q in ("p50", "p95")}
                       for n in sessions}
               for label in ("off", "on")}
    return {"summary_mean_of_runs": summary, "runs": runs}


def _mean_of_runs(runs: list[dict[str, Any]], label: str, sessions: int, figure: str, q: str
                  ) -> float | None:
    values = [run[str(sessions)][figure][q] for run in runs if run["batching"] == label]
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 1) if values else None


def _stack_run(window: str, sessions: Sequence[int], rounds: int) -> dict[str, Any]:
    import asyncio
    import tempfile

    from bench.latency import _clip, _turn, concurrency_figures
    from tests.stack import Stack

    with tempfile.TemporaryDirectory(prefix="inzwa-bench-asr-batch-") as run_dir:
        stack = Stack(Path(run_dir), INZWA_ASR_BATCH_WINDOW_MS=window)
        try:
            stack.start()
            asyncio.run(_turn(stack.url, _clip("LJ001-0002")))  # warm every path once
            figures = {str(n): concurrency_figures(stack, n, rounds) for n in sessions}
        finally:
            stack.stop()
    return figures


def _print(rows: list[dict[str, Any]]) -> None:
    print(f"{'clips':>8} {'n':>3} {'spread':>6} | {'seq p50':>8} {'p95':>7} {'wall':>7} | "
          f"{'batch p50':>9} {'p95':>7} {'wall':>7} | sizes, same text")
    for row in rows:
        seq, bat = row["sequential"], row["batched"]
        print(f"{row['clips']:>8} {row['concurrency']:>3} {row['spread_ms']:>6.0f} | "
              f"{seq['latency_ms_p50']:>8} "
              f"{seq['latency_ms_p95']:>7} {seq['wall_ms_p50']:>7} | {bat['latency_ms_p50']:>9} "
              f"{bat['latency_ms_p95']:>7} {bat['wall_ms_p50']:>7} | {row['batch_sizes']} "
              f"{row['same_text']}")


if __name__ == "__main__":
    main()
