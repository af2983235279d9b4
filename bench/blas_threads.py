"""CPU and wall time of partial-style Whisper decodes with numpy's default BLAS threads and
with one (what every Inzwa process sets, common/threads.py).

Each setting runs in a fresh process (OpenBLAS reads the variable once, when numpy loads): the
real Whisper model decodes a question clip as partials would, growing by 300 ms each time, a
few rounds, one decode every 300 ms as in a live session. Prints JSON: CPU-s of the whole
stretch and wall-s of the decodes themselves per setting (medians of the rounds), and the CPU
ratio.

    python -m bench.blas_threads [--clip q_en_capital.wav] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "speech"
STEP = 4800  # 300 ms of 16 kHz audio


def measure(clip: Path) -> dict[str, float]:
    """In this process: one warm-up decode, then the growing decodes; CPU and wall seconds."""
    from asr_worker.engines.whisper import WhisperEngine
    from common.audio import pcm16_to_float, read_wav
    from common.models import resolve
    from common.settings import Settings

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    engine = WhisperEngine.load(resolve(settings.asr_model, settings.models_dir),
                                compute_type=settings.asr_compute_type, threads=settings.asr_threads)
    audio = pcm16_to_float(read_wav(clip)[0])
    engine.transcribe(audio[:16000], "en")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu, wall = usage.ru_utime + usage.ru_stime, time.perf_counter()
    busy = 0.0
    for n, end in enumerate(range(8 * STEP, audio.size + STEP, STEP)):
        # at the pace of speech: a decode every 300 ms, the idle gaps between them included
        time.sleep(max(0.0, wall + n * STEP / 16000 - time.perf_counter()))
        started = time.perf_counter()
        engine.transcribe(audio[:end], "en")
        busy += time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": usage.ru_utime + usage.ru_stime - cpu, "wall_s": busy}


def run(threads: str | None, clip: Path) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if threads is not None:
        env["OPENBLAS_NUM_THREADS"] = threads
    else:  # the default: the package __init__ must not set it either
        env["OPENBLAS_NUM_THREADS"] = str(os.cpu_count() or 1)
    out = subprocess.run([sys.executable, "-m", "bench.blas_threads", "--child", str(clip)],
                         env=env, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clip", default="q_en_capital.wav")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child))))
        return
    clip = FIXTURES / args.clip
    figures: dict[str, dict[str, float]] = {}
    for label, threads in (("default", None), ("one", "1")):
        rounds = [run(threads, clip) for _ in range(args.rounds)]
        figures[label] = {key: round(statistics.median(r[key] for r in rounds), 3)
                          for key in ("cpu_s", "wall_s")}
    ratio = round(figures["one"]["cpu_s"] / figures["default"]["cpu_s"], 2)
    print(json.dumps({"clip": args.clip, "cores": os.cpu_count(), **figures,
                      "cpu_ratio_one_to_default": ratio}, indent=2))


if __name__ == "__main__":
    main()
