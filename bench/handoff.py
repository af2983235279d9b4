"""`make bench` (handoff area, issue 14): what evaluating the handoff triggers costs per final
transcript, P50/P99 per language (target < 5 ms), every tier on, in this process on this CPU;
and the frustration classifier's precision/recall on the held-apart phrases.

`python -m bench --only-handoff` writes bench/results/handoff.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.languages import handoff as handoff_data
from common.settings import Settings
from orchestrator.triggers import Signals, Triggers
from orchestrator.triggers_model import precision_recall

RESULTS = Path(__file__).resolve().parent / "results"
PASSES = 20  # over every phrase of the language: thousands of evaluations
TURNS_PER_SESSION = 6  # a fresh session's signals every few turns, as in real calls


def _transcripts(code: str) -> list[str]:
    from tests.handoff_heldout import HELDOUT  # the held-apart phrases: never trained on

    data = handoff_data.get(code)
    return [*data.frustrated, *data.calm, *(text for text, _ in HELDOUT.get(code, []))]


def evaluation_ms(triggers: Triggers, code: str) -> dict[str, Any]:
    texts = _transcripts(code)
    samples: list[float] = []
    signals = Signals()
    for index in range(PASSES * len(texts)):
        if index % TURNS_PER_SESSION == 0:
            signals = Signals()
        text = texts[index % len(texts)]
        start = time.perf_counter_ns()
        triggers.evaluate(signals, code, text, 0.8, fallbacks=0)
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return {"p50": round(float(np.percentile(samples, 50)), 4),
            "p99": round(float(np.percentile(samples, 99)), 4),
            "max": round(max(samples), 4), "n": len(samples)}


def handoff_figures() -> dict[str, Any]:
    from tests.handoff_heldout import HELDOUT

    settings = Settings(_env_file=None, handoff_low_confidence_turns=3, handoff_repeats=3)  # type: ignore[call-arg]
    triggers = Triggers(settings)
    figures: dict[str, Any] = {"target_ms": 5.0, "trigger_eval_ms": {}, "classifier": {}}
    for code in handoff_data.codes():
        figures["trigger_eval_ms"][code] = evaluation_ms(triggers, code)
        precision, recall = precision_recall(triggers.models[code], HELDOUT[code],
                                             settings.handoff_frustration_threshold)
        figures["classifier"][code] = {"precision": round(precision, 3), "recall": round(recall, 3),
                                       "heldout": len(HELDOUT[code])}
    return figures


def main() -> None:
    figures = handoff_figures()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "handoff.json").write_text(json.dumps(figures, indent=2))
    for code, value in figures["trigger_eval_ms"].items():
        print(f"{'handoff.trigger_eval_ms.' + code:<40}{value['p50']!s:>10}{value['p99']!s:>10}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
