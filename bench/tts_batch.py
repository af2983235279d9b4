"""Batched VITS synthesis across sessions against one phrase at a time (`python -m bench.tts_batch`).

N sessions each send one reply phrase at the same moment, as when N replies start together. The
real TTS worker (`tts_worker.worker.TtsWorker`, in process, no cache) serves them with the
configured Piper voice: "serial" is the worker as it is by default (one phrase at a time, in
arrival order); "batched" is INZWA_TTS_BATCH_MAX=N: the phrases of the N sessions at once, their
sentences sharing VITS runs through `tts_worker.batching.TtsBatcher`. Rounds alternate the two
modes so machine load falls on both alike.

Writes bench/results/tts_batch.json (the previous run kept as tts_batch.previous.json): per
concurrency, first-audio latency P50/P95 (request in -> its first 20 ms frame out) and wall time
(all requests in -> the last phrase closed) for each mode, and the batch sizes formed; and
`run_cost`: n runs of one sentence against one run of the same sentence n times (no padding):
what a batch saves in compute on this machine, which bounds what batching can gain here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.keep import save_with_previous
from common.frames import AudioChunk, Frame, SynthesizeRequest
from common.settings import Settings
from tts_worker.batching import TtsBatcher
from tts_worker.engines.piper import PiperVoice
from tts_worker.registry import load_engine
from tts_worker.worker import TtsWorker

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "tts_batch.json"
# Reply phrases as the orchestrator cuts them: a first short clause, then whole sentences.
PHRASES = ("Sure, here is what I found.", "The capital of Zimbabwe is Harare.",
           "It should be sunny tomorrow, with a light wind.", "Good morning!",
           "I can help you with that.", "Harare has about two million people. It is the largest city.",
           "Let me check the weather for you.", "Yes, that is right.")


class _Timing:
    """The worker's runtime, reduced to what this bench reads: when each request's first audio
    frame and final chunk came out."""

    def __init__(self) -> None:
        self.kind = "tts"
        self.busy = 0
        self.first: dict[str, float] = {}
        self.closed: dict[str, float] = {}
        self.all_closed = asyncio.Event()
        self.expected = 0

    async def emit(self, frame: Frame) -> bool:
        now = time.perf_counter()
        if isinstance(frame, AudioChunk):
            if frame.payload:
                self.first.setdefault(frame.request_id, now)
            if frame.is_final:
                self.closed[frame.request_id] = now
                if len(self.closed) == self.expected:
                    self.all_closed.set()
        return True

    def is_cancelled(self, session_id: str, turn_id: int, request_id: str = "") -> bool:
        return False


async def _round(voice: PiperVoice, texts: Sequence[str], concurrency: int) -> tuple[float, list[float]]:
    """All phrases in at once: wall s (in -> last closed) and first-audio ms per phrase."""
    worker = TtsWorker(voice, frame_ms=20, concurrency=concurrency)
    timing = _Timing()
    timing.expected = len(texts)
    worker.runtime = timing  # type: ignore[assignment]
    serving = asyncio.create_task(worker.run())
    start = time.perf_counter()
    for index, text in enumerate(texts):
        await worker.handle(SynthesizeRequest(session_id=f"s{index}", turn_id=1, text=text,
                                              request_id=f"r{index}"))
    await asyncio.wait_for(timing.all_closed.wait(), 300)
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)
    firsts = [(timing.first[f"r{k}"] - start) * 1000 for k in range(len(texts))]
    return max(timing.closed.values()) - start, firsts


def _pct(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


def measure(voice: PiperVoice, sessions: int, rounds: int, window_ms: float) -> dict[str, Any]:
    batcher = TtsBatcher(voice, window_ms=window_ms, max_batch=max(2, sessions))
    walls: dict[str, list[float]] = {"serial": [], "batched": []}
    firsts: dict[str, list[float]] = {"serial": [], "batched": []}
    for round_index in range(rounds):
        texts = [PHRASES[(round_index + k) % len(PHRASES)] for k in range(sessions)]
        for mode in sorted(walls, reverse=round_index % 2 == 1):
            voice.inference = batcher.infer if mode == "batched" else None
            wall, first = asyncio.run(_round(voice, texts, sessions if mode == "batched" else 1))
            walls[mode].append(wall * 1000)
            firsts[mode].extend(first)
    voice.inference = None
    result = {mode: {"first_audio_ms_p50": _pct(firsts[mode], 50),
                     "first_audio_ms_p95": _pct(firsts[mode], 95),
                     "wall_ms_p50": _pct(walls[mode], 50), "phrases": len(firsts[mode])}
              for mode in walls}
    stats = batcher.stats()
    return {"sessions": sessions, "rounds": rounds, **result,
            "batch_sizes": {str(k): v for k, v in stats["sizes"].items()},
            "first_audio_p95_ratio": round(result["batched"]["first_audio_ms_p95"]
                                           / result["serial"]["first_audio_ms_p95"], 2),
            "wall_ratio": round(result["batched"]["wall_ms_p50"] / result["serial"]["wall_ms_p50"], 2)}


def run_cost(voice: PiperVoice, sizes: Sequence[int] = (1, 2, 4, 8), repeats: int = 3
             ) -> list[dict[str, Any]]:
    """ms for n separate runs and for one run of n items (the same sentence: no padding)."""
    phonemes = voice.phonemizer.phonemize(PHRASES[1])[0]
    rows = []
    for n in sizes:
        singles, batches = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(n):
                voice._infer(phonemes)
            singles.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            voice.infer_batch([(phonemes, 1.0)] * n)
            batches.append((time.perf_counter() - start) * 1000)
        single, batch = float(np.median(singles)), float(np.median(batches))
        rows.append({"items": n, "separate_runs_ms": round(single, 1), "one_batch_ms": round(batch, 1),
                     "ratio": round(batch / single, 2)})
    return rows


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    return {f"{mode}_{row['sessions']}_{figure}": row[mode][figure] for row in report["rows"]
            for mode in ("serial", "batched") for figure in ("first_audio_ms_p95", "wall_ms_p50")}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sessions", default="1,4,8")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    settings = Settings()
    voice = load_engine(settings.model_copy(update={"tts_batch_max": 8}))
    assert isinstance(voice, PiperVoice) and voice.batches, "the configured voice cannot batch"
    voice.warmup()
    rows = [measure(voice, int(n), args.rounds, settings.tts_batch_window_ms)
            for n in args.sessions.split(",")]
    voice.inference = None
    cost = run_cost(voice)
    report = {"machine": {"python": platform.python_version(), "cpu": platform.processor(),
                          "tts_threads": settings.tts_threads},
              "model": settings.tts_model, "window_ms": settings.tts_batch_window_ms, "rows": rows,
              "run_cost": cost}
    save_with_previous(RESULTS, report, _headline)
    for row in [*rows, *cost]:
        print(json.dumps(row))
    return report


if __name__ == "__main__":
    main()
