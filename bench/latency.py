"""Issue 15's figures in one run: v2v from the acoustic end of speech, end-of-turn accuracy,
and the cost of long utterances (`python -m bench --only-latency`, and part of `make bench`).

1. The real stack (default models and settings): the question clips and human LJ Speech
   utterances streamed in real time, each followed by silence and NO end_turn, so the server's
   own end-of-turn decision is in the figure; v2v = first reply audio after the clip's acoustic
   end of speech (gateway.client.Talker). Per clip and overall, for 1, 4 and 8 sessions at once;
   CPU % per core of the machine and of the stack's processes during the 8-session run.
2. v2v against utterance length: human speech of ~2 s to ~15 s (LJ Speech clips joined).
3. End-of-turn accuracy on the labelled pause set (tests/turn_pause_set.py), offline, for the
   silence timeout alone and for the configured model (bench/turn_end_eval.py).

The machine is shared: every scope records the load average, and the report keeps the previous
run's figures (bench/results/latency.previous.json) with ratios, so a regression shows as one.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import FIXTURES, ROOT
from bench.keep import save_with_previous
from common.audio import read_wav
from gateway.client import Talker, TalkResult, speech_end_s

RESULTS = ROOT / "bench" / "results"
TAIL_S = 2.0  # silence after each utterance: longer than the longest end-of-turn wait
# Human utterances of growing length (LJ Speech clips joined; their own short silences stay).
LENGTHS = {
    "2s": ("LJ001-0002",),
    "5s": ("LJ001-0004",),
    "8s": ("LJ001-0004", "LJ001-0013"),
    "11s": ("LJ001-0004", "LJ001-0006"),
    "15s": ("LJ001-0004", "LJ001-0006", "LJ001-0013", "LJ001-0008"),
}


def _pct(values: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(values, q)), 1) if values else None


def _stats(values: list[float | None]) -> dict[str, Any]:
    clean = [v for v in values if v is not None]
    return {"p50": _pct(clean, 50), "p95": _pct(clean, 95), "n": len(clean)}


def _clip(*names: str) -> bytes:
    return b"".join(read_wav(FIXTURES / f"{name}.wav")[0] for name in names)


def clips() -> dict[str, bytes]:
    """The turn set: the synthetic English questions and two human sentences."""
    out = {p.stem: read_wav(p)[0] for p in sorted(FIXTURES.glob("q_en_*.wav"))}
    out.update({name: _clip(name) for name in ("LJ001-0002", "LJ001-0008")})
    return out


async def _turn(url: str, pcm: bytes) -> TalkResult:
    talker = Talker(pcm + b"\0" * int(TAIL_S * 32000), end_turn=False, until_first_audio=True)
    return await talker.run(url, timeout_s=90)


async def _round(url: str, batch: list[tuple[str, bytes]]) -> list[tuple[str, TalkResult]]:
    results = await asyncio.gather(*(_turn(url, pcm) for _, pcm in batch))
    return [(name, result) for (name, _), result in zip(batch, results, strict=True)]


def _cpu_times() -> list[tuple[int, int]]:
    """(busy, total) jiffies per core from /proc/stat."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + values[4]
            out.append((sum(values) - idle, sum(values)))
    return out


def _proc_cpu_s(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return total


def _gap(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else later - earlier


def stage_profile(results: list[TalkResult]) -> dict[str, Any]:
    """Where a turn's time goes, from the end of speech as the client saw it: the final
    transcript, the first reply token (the early reply may have it before the final), and from
    that token to the first reply audio (the first phrase's cut and its synthesis)."""
    return {
        "end_of_speech_to_final": _stats([r.asr_final_ms for r in results]),
        "end_of_speech_to_first_token": _stats([r.first_token_ms for r in results]),
        "first_token_to_first_audio": _stats([_gap(r.v2v_ms, r.first_token_ms) for r in results]),
    }


def concurrency_figures(stack: Any, sessions: int, rounds: int) -> dict[str, Any]:
    named = list(clips().items())
    pids = list(stack.pids(by_process=True).values())
    load_before = os.getloadavg()[0]
    cpu0, proc0, wall0 = _cpu_times(), _proc_cpu_s(pids), time.monotonic()
    results: list[tuple[str, TalkResult]] = []
    for r in range(rounds):
        batch = [named[(r * sessions + i) % len(named)] for i in range(sessions)]
        results += asyncio.run(_round(stack.url, batch))
    cpu1, proc1, wall = _cpu_times(), _proc_cpu_s(pids), time.monotonic() - wall0
    per_core = [round(100 * (b1 - b0) / max(1, t1 - t0), 1)
                for (b0, t0), (b1, t1) in zip(cpu0, cpu1, strict=True)]
    per_clip = {name: _stats([r.v2v_ms for n, r in results if n == name]) for name, _ in named}
    return {
        "sessions": sessions, "turns": len(results),
        "failed": sum(1 for _, r in results if r.v2v_ms is None or r.errors),
        "v2v_ms": _stats([r.v2v_ms for _, r in results]),
        "asr_final_ms": _stats([r.asr_final_ms for _, r in results]),
        "stages_ms": stage_profile([r for _, r in results]),
        "per_clip_v2v_ms": per_clip,
        "machine_cpu_pct_per_core": per_core,
        "stack_cpu_pct_per_core": round(100 * (proc1 - proc0) / wall / (os.cpu_count() or 1), 1),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def length_figures(stack: Any, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, names in LENGTHS.items():
        pcm = _clip(*names)
        turns = [asyncio.run(_round(stack.url, [(label, pcm)]))[0][1] for _ in range(rounds)]
        out[label] = {"speech_s": round(speech_end_s(pcm), 2),
                      "v2v_ms": _stats([t.v2v_ms for t in turns]),
                      "asr_final_ms": _stats([t.asr_final_ms for t in turns])}
    short, long = out["2s"]["v2v_ms"]["p50"], out["15s"]["v2v_ms"]["p50"]
    out["15s_minus_2s_p50_ms"] = None if short is None or long is None else round(long - short, 1)
    return out


def turn_end_figures() -> dict[str, Any]:
    from asr_worker.registry import load_engine
    from asr_worker.turn_end import load_turn_end
    from bench.turn_end_eval import run_item, summarize
    from common.settings import Settings
    from tests import turn_pause_set

    settings = Settings()
    engine, judge = load_engine(settings), load_turn_end(settings)
    items = turn_pause_set.generate()
    out = {}
    for name, model, wait in (("silence_only", None, None),
                              (settings.turn_end, judge, settings.turn_end_wait_ms)):
        outcomes = [run_item(engine, item, model, silence_ms=settings.vad_silence_ms,
                             pause_ms=settings.early_pause_ms, threshold=settings.turn_end_threshold,
                             wait_ms=wait) for item in items]
        out[name] = summarize(outcomes, quick_ms=settings.vad_silence_ms)
    return out


def baseline_figures(rounds: int) -> dict[str, Any]:
    """One session on a stack that ends turns on the silence timeout alone (INZWA_TURN_END=
    silence, no tail decoding): the same clips in the same run, so the change is a ratio."""
    from tests.stack import Stack

    with tempfile.TemporaryDirectory(prefix="inzwa-bench-baseline-") as run_dir:
        stack = Stack(Path(run_dir), INZWA_TURN_END="silence", INZWA_ASR_TAIL_DECODE="false")
        try:
            stack.start()
            asyncio.run(_turn(stack.url, _clip("LJ001-0002")))
            figures = concurrency_figures(stack, 1, 2 * rounds)
            figures["length"] = length_figures(stack, rounds)
        finally:
            stack.stop()
    return figures


def run(rounds: int = 2, max_sessions: int = 8) -> dict[str, Any]:
    from tests.stack import Stack

    report: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg_1m_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="inzwa-bench-latency-") as run_dir:
        stack = Stack(Path(run_dir))
        try:
            stack.start()
            asyncio.run(_turn(stack.url, _clip("LJ001-0002")))  # warm every path once
            report["length"] = length_figures(stack, rounds)
            report["concurrency"] = {str(n): concurrency_figures(stack, n, rounds if n > 1 else 2 * rounds)
                                     for n in (1, 4, max_sessions)}
        finally:
            stack.stop()
    report["silence_only_one_session"] = baseline_figures(rounds)
    new = report["concurrency"]["1"]["v2v_ms"]["p50"]
    old = report["silence_only_one_session"]["v2v_ms"]["p50"]
    report["one_session_v2v_p50_ratio_to_silence_only"] = round(new / old, 2) if new and old else None
    report["turn_end"] = turn_end_figures()
    return report


def _headline(report: dict[str, Any]) -> dict[str, float | None]:
    conc = report.get("concurrency", {})
    figures: dict[str, float | None] = {}
    for n, scope in conc.items():
        figures[f"v2v_p50_{n}"] = scope["v2v_ms"]["p50"]
        figures[f"v2v_p95_{n}"] = scope["v2v_ms"]["p95"]
    length = report.get("length", {})
    figures["15s_minus_2s_p50_ms"] = length.get("15s_minus_2s_p50_ms")
    baseline = report.get("silence_only_one_session", {})
    figures["v2v_p50_1_silence_only"] = baseline.get("v2v_ms", {}).get("p50")
    return figures


def save(report: dict[str, Any]) -> dict[str, Any]:
    """Write latency.json, keeping the previous one, and the ratios new / previous."""
    return save_with_previous(RESULTS / "latency.json", report, _headline)


def main(rounds: int = 2) -> None:
    report = save(run(rounds))
    print(json.dumps({"headline": _headline(report), "turn_end": report["turn_end"],
                      "one_session_v2v_p50_ratio_to_silence_only":
                          report["one_session_v2v_p50_ratio_to_silence_only"],
                      "ratio_to_previous": report.get("ratio_to_previous")}, indent=2))


if __name__ == "__main__":
    main()
