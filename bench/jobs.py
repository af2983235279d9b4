"""Whole turns over HTTP for `make bench` (issues 13 and 14): the job API's time to the first
reply audio byte next to `/ws/audio`'s, and `POST /v1/turns` for a fixture clip.

Both are measured from the moment the person has finished speaking: for the WebSocket, the end
of speech in the clip streamed in real time (its end-of-turn wait included, as a caller feels
it); for the HTTP routes, the moment the whole recording is sent (a client uploads once the
person has stopped). The first audio byte is the first byte after the WAV header. The two are
taken alternately on the same clip, in alternating order, so neither always gets the warm TTS
audio cache.

`python -m bench.jobs [--rounds N]` runs these alone on a stack of the real models
(bench/results/jobs.json); `make bench` includes them in its report.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from gateway.client import Talker, load_clip

WAV_HEADER = 44
TIMEOUT = httpx.Timeout(120.0)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def _first_audio(response: httpx.Response, start: float) -> tuple[float | None, float]:
    """(ms to the first audio byte after the WAV header, ms to the end of the body)."""
    response.raise_for_status()
    first, received = None, 0
    for chunk in response.iter_raw():
        received += len(chunk)
        if first is None and received > WAV_HEADER:
            first = _ms(start)
    return first, _ms(start)


def job_turn(client: httpx.Client, wav: bytes) -> tuple[float | None, float]:
    """Start a job with the recording, stream its result: (first audio byte, end) in ms."""
    start = time.perf_counter()
    started = client.post("/api/v1/interaction/start", content=wav, headers={"content-type": "audio/wav"})
    started.raise_for_status()
    with client.stream("GET", started.json()["result"]) as response:
        return _first_audio(response, start)


def turns_streamed(client: httpx.Client, wav: bytes) -> tuple[float | None, float]:
    start = time.perf_counter()
    with client.stream("POST", "/v1/turns", content=wav, headers={"content-type": "audio/wav"}) as response:
        return _first_audio(response, start)


def turns_json(client: httpx.Client, wav: bytes) -> float:
    start = time.perf_counter()
    response = client.post("/v1/turns", content=wav, headers={"content-type": "audio/wav",
                                                               "accept": "application/json"})
    response.raise_for_status()
    return _ms(start)


def ws_turn(url: str, clip: Path) -> float | None:
    """/ws/audio in real time: end of speech to the first reply audio byte."""
    result = asyncio.run(Talker(load_clip(clip), until_first_audio=True).run(url, timeout_s=120))
    return result.v2v_ms if result.completed and not result.errors else None


def _summary(values: list[float | None]) -> dict[str, Any]:
    clean = [v for v in values if v is not None]
    if not clean:
        return {"p50": None, "p95": None, "n": 0}
    return {"p50": round(float(np.percentile(clean, 50)), 1),
            "p95": round(float(np.percentile(clean, 95)), 1), "n": len(clean)}


def jobs_figures(stack: Any, clips: list[Path], rounds: int = 1) -> dict[str, Any]:
    rows: dict[str, list[float | None]] = {}

    def add(name: str, value: float | None) -> None:
        rows.setdefault(name, []).append(value)

    with httpx.Client(base_url=stack.http, timeout=TIMEOUT) as client:
        for index, clip in enumerate(clips * rounds):
            wav = clip.read_bytes()
            order = ("ws", "job") if index % 2 == 0 else ("job", "ws")
            for kind in order:
                if kind == "ws":
                    add("ws_first_audio_ms", ws_turn(stack.url, clip))
                else:
                    first, total = job_turn(client, wav)
                    add("job_first_audio_ms", first)
                    add("job_total_ms", total)
            first, total = turns_streamed(client, wav)
            add("turns_first_audio_ms", first)
            add("turns_total_ms", total)
            add("turns_json_ms", turns_json(client, wav))
    figures: dict[str, Any] = {name: _summary(values) for name, values in rows.items()}
    job, ws = figures["job_first_audio_ms"]["p50"], figures["ws_first_audio_ms"]["p50"]
    figures["job_minus_ws_first_audio_p50_ms"] = None if job is None or ws is None else round(job - ws, 1)
    return figures


def print_jobs(figures: dict[str, Any]) -> None:
    for name, value in figures.items():
        if isinstance(value, dict):
            print(f"{'jobs.' + name:<40}{value['p50']!s:>10}{value['p95']!s:>10}")
        else:
            print(f"{'jobs.' + name:<40}{value!s:>10}")


def jobs_main(clips: list[Path], rounds: int) -> None:
    """`python -m bench.jobs`: a stack of the real models, bench/results/jobs.json."""
    from tests.stack import Stack

    with tempfile.TemporaryDirectory(prefix="inzwa-bench-") as run_dir:
        stack = Stack(Path(run_dir))
        try:
            stack.start()
            ws_turn(stack.url, clips[0])  # warm every path once
            figures = jobs_figures(stack, clips, rounds)
        finally:
            stack.stop()
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "jobs.json").write_text(json.dumps(figures, indent=2))
    print_jobs(figures)


if __name__ == "__main__":
    import argparse

    from bench.__main__ import questions

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=1, help="passes over the question clips")
    jobs_main(questions(), parser.parse_args().rounds)
