"""CPU and wall time of partial-style Whisper decodes under the thread settings: numpy's BLAS
threads (every Inzwa process sets one, common/threads.py) and CTranslate2's decode threads
(`INZWA_ASR_THREADS`).

Each setting runs in a fresh process (OpenBLAS reads its variable once, when numpy loads): the
real Whisper model decodes a question clip as partials would, growing by 300 ms each time, one
decode every 300 ms as in a live session, then decodes a 13 s clip once (a long final). Prints
JSON: per setting, CPU-s of the partial stretch, wall-s of its decodes, and wall-s of the long
decode (medians of the rounds).

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

from bench import FIXTURES

STEP = 4800  # 300 ms of 16 kHz audio


def measure(clip: Path) -> dict[str, float]:
    """In this process: one warm-up decode, then the growing decodes; CPU and wall seconds."""
    import numpy as np

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
    long = np.concatenate([pcm16_to_float(read_wav(FIXTURES / f"LJ001-00{n}.wav")[0])
                           for n in ("04", "06", "13")])
    started = time.perf_counter()
    engine.transcribe(long, "en")
    return {"cpu_s": usage.ru_utime + usage.ru_stime - cpu, "wall_s": busy,
            "long_wall_s": time.perf_counter() - started}


SETTINGS = {  # label: (OPENBLAS_NUM_THREADS, INZWA_ASR_THREADS); OpenBLAS's own default is a
    # thread per core, spelled out since the package __init__ would set 1
    "blas_per_core_decode_2": (str(os.cpu_count() or 1), "2"),
    "blas_1_decode_2": ("1", "2"),
    "blas_1_decode_1": ("1", "1"),
}


def run(blas: str, decode: str, clip: Path) -> dict[str, float]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": blas, "INZWA_ASR_THREADS": decode}
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
    for label, (blas, decode) in SETTINGS.items():
        rounds = [run(blas, decode, clip) for _ in range(args.rounds)]
        figures[label] = {key: round(statistics.median(r[key] for r in rounds), 3)
                          for key in ("cpu_s", "wall_s", "long_wall_s")}
    print(json.dumps({"clip": args.clip, "cores": os.cpu_count(), **figures}, indent=2))


if __name__ == "__main__":
    main()
