"""End-of-turn trade-off on the labelled pause set: premature commits against end delay for a
grid of Smart Turn thresholds and "not done" waits (`python -m bench.turn_end_grid`).

Offline and in stream time (bench/turn_end_eval.py), so the figures do not depend on load. It
answers "would a longer wait or a higher threshold fix the premature ends?" with numbers before
anyone changes INZWA_TURN_END_THRESHOLD or INZWA_TURN_END_WAIT_MS.
"""

from __future__ import annotations

import json
from typing import Any

THRESHOLDS = (0.5, 0.7)
WAITS_MS = (700, 1100, 1300)


def grid() -> list[dict[str, Any]]:
    from asr_worker.registry import load_engine
    from asr_worker.turn_end import load_turn_end
    from bench.turn_end_eval import run_item, summarize
    from common.settings import Settings
    from tests import turn_pause_set

    settings = Settings()
    engine, judge = load_engine(settings), load_turn_end(settings)
    items = turn_pause_set.generate()
    rows = []
    for threshold in THRESHOLDS:
        for wait_ms in WAITS_MS:
            outcomes = [run_item(engine, item, judge, silence_ms=settings.vad_silence_ms,
                                 pause_ms=settings.early_pause_ms, threshold=threshold,
                                 wait_ms=wait_ms) for item in items]
            summary = summarize(outcomes, quick_ms=settings.vad_silence_ms)
            rows.append({"threshold": threshold, "wait_ms": wait_ms,
                         **{k: summary[k] for k in ("premature_rate", "late_rate",
                                                    "end_delay_ms_p50", "end_delay_ms_p95")}})
    return rows


if __name__ == "__main__":
    print(json.dumps(grid(), indent=1))
