"""The LLM's end-of-turn probability against Smart Turn (`python -m bench.turn_end_llm`).

Same labelled pause set and the same offline, stream-time run through the real `AsrSession`
(bench/turn_end_eval.py), for: Smart Turn with the text guard (the default), Smart Turn alone,
the LLM judge (asr_worker/turn_end_llm.py) with and without the guard, and the two together
(either says "complete", both say it), over thresholds. The LLM's thresholds here are on its raw
P(end); the worker's default calibration reads raw 0.05 as 0.5. Then every speech fixture, whole
and cut mid-phrase, scored by each judge (English and Shona apart), the reference texts whole
and cut, and the cost of one call. JSON to bench/results/turn_end_llm.json.

Whisper is deterministic here, so its transcriptions are kept by (audio, prompt) across the
passes; so are the judges' scores (their timings come from the first, real calls).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asr_worker.interface import Transcription
from asr_worker.turn_end import TurnEnd
from bench import FIXTURES

RESULTS = Path(__file__).resolve().parent / "results" / "turn_end_llm.json"
LLM_THRESHOLDS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
SMART_THRESHOLDS = (0.5, 0.7)
WAITS_MS = (700, 1100)
CUT = 0.55  # a fixture cut at 55 % of its length ends mid-phrase (as tests/test_turn_end.py)


def _key(audio: np.ndarray, *extra: str) -> str:
    return hashlib.sha1(audio.tobytes() + "\x00".join(extra).encode()).hexdigest()


class KeptWhisper:
    """The real Whisper engine; a second decode of the same audio returns the first's result."""

    partials = False

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.prompted = bool(getattr(engine, "prompted", False))
        self._kept: dict[str, Transcription] = {}

    def info(self) -> dict[str, str]:
        return dict(self._engine.info())

    def transcribe(self, audio: np.ndarray, language: str | None = None,
                   prompt: str = "") -> Transcription:
        key = _key(audio, language or "", prompt)
        if key not in self._kept:
            kwargs = {"prompt": prompt} if prompt else {}
            self._kept[key] = self._engine.transcribe(audio, language, **kwargs)
        return self._kept[key]


@dataclass
class Timed:
    """A judge whose scores are kept by (audio, text) and whose real calls are timed."""

    inner: TurnEnd
    uses_audio: bool
    calls_ms: list[float] = field(default_factory=list)
    kept: dict[str, float] = field(default_factory=dict)

    def info(self) -> dict[str, str]:
        return self.inner.info()

    def supports(self, language: str) -> bool:
        return self.inner.supports(language)

    def probability(self, audio: np.ndarray, text: str, language: str) -> float:
        key = _key(audio if self.uses_audio else np.zeros(0, np.float32), text, language)
        if key not in self.kept:
            start = time.perf_counter()
            self.kept[key] = self.inner.probability(audio, text, language)
            self.calls_ms.append((time.perf_counter() - start) * 1000)
        return self.kept[key]


@dataclass
class Verdict:
    """Two judges, each against its own threshold: "any" (either says complete) or "all"."""

    judges: list[tuple[TurnEnd, float]]
    mode: str

    def info(self) -> dict[str, str]:
        return {"name": self.mode, "version": "", "sha256": "", "engine": "combined"}

    def supports(self, language: str) -> bool:
        return any(judge.supports(language) for judge, _ in self.judges)

    def probability(self, audio: np.ndarray, text: str, language: str) -> float:
        votes = [judge.probability(audio, text, language) >= threshold
                 for judge, threshold in self.judges if judge.supports(language)]
        return 1.0 if (any(votes) if self.mode == "any" else all(votes)) else 0.0


def judge_configs(smart: TurnEnd, llm: TurnEnd) -> list[tuple[str, TurnEnd, float]]:
    """(label, judge, session threshold) for every configuration compared."""
    from asr_worker.turn_end_text import TextGuarded

    configs: list[tuple[str, TurnEnd, float]] = []
    for t in SMART_THRESHOLDS:
        configs.append((f"smart-turn+guard@{t}", TextGuarded(smart), t))
        configs.append((f"smart-turn@{t}", smart, t))
    for t in LLM_THRESHOLDS:
        configs.append((f"llm@{t}", llm, t))
    for t in LLM_THRESHOLDS[:3]:  # INZWA_TURN_END=llm as the worker loads it: guard on
        configs.append((f"llm+guard@{t}", TextGuarded(llm), t))
    for t in LLM_THRESHOLDS[1:4]:
        configs.append((f"llm@{t} OR smart-turn+guard@0.5",
                        Verdict([(llm, t), (TextGuarded(smart), 0.5)], "any"), 0.5))
        configs.append((f"llm@{t} AND smart-turn@0.5", Verdict([(llm, t), (smart, 0.5)], "all"), 0.5))
    return configs


def pause_set_rows(engine: Any, configs: list[tuple[str, TurnEnd, float]], settings: Any,
                   items: list[Any]) -> list[dict[str, Any]]:
    """Premature ends and end delay on a pause set for every configuration and wait."""
    from bench.turn_end_eval import run_item, summarize

    rows = []
    for wait_ms in WAITS_MS:
        for label, judge, threshold in configs:
            outcomes = [run_item(engine, item, judge, silence_ms=settings.vad_silence_ms,
                                 pause_ms=settings.early_pause_ms, threshold=threshold,
                                 wait_ms=wait_ms) for item in items]
            summary = summarize(outcomes, quick_ms=settings.vad_silence_ms)
            rows.append({"judge": label, "wait_ms": wait_ms, **{k: summary[k] for k in (
                "premature_rate", "premature_commits", "premature_recovered", "late_rate",
                "end_delay_ms_p50", "end_delay_ms_p95", "end_delay_ms_mean", "premature_names")}})
            print(f"{label:40s} wait {wait_ms}: premature {summary['premature_rate']:.2f} "
                  f"P50 {summary['end_delay_ms_p50']:.0f} ms", flush=True)
    return rows


# Held apart from tests/turn_pause_set.py (the LLM's calibration was read off that set): new
# sentences, the same espeak-ng rendering. The last two paused ones are complete before the
# pause too ("Who won the football match ... last night"): a text judge cannot know, and
# neither could a listener.
HELD_PAUSED = [
    ("Can you read me", "the news headlines"),
    ("I forgot to tell you about", "my appointment"),
    ("How much does it cost to", "fly to Victoria Falls"),
    ("Please add eggs to", "my shopping list"),
    ("What is the weather like in", "Mutare this weekend"),
    ("I would like to order a", "large pizza"),
    ("Remind me tomorrow to", "water the plants"),
    ("My daughter wants to learn", "how to swim"),
    ("Could you find me a", "cheap hotel in Harare"),
    ("The train to Bulawayo leaves at", "half past seven"),
    ("Who won the football match", "last night"),
    ("Call my sister", "when you have a moment"),
]
HELD_COMPLETE = [
    "Good morning, how are you?", "Play some relaxing music.", "What day is it today?",
    "How far is Mutare from Harare?", "Thank you, that is all.", "Can you repeat that please?",
    "Switch off the radio.", "Who wrote this song?",
]


def held_apart_items() -> list[Any]:
    from tests.turn_pause_set import PAUSES_MS, _item

    items = []
    for i, (before, after) in enumerate(HELD_PAUSED):
        pause_ms = PAUSES_MS[i % len(PAUSES_MS)]
        ssml = f'<speak>{before} <break time="{pause_ms}ms"/> {after}.</speak>'
        items.append(_item(f"held{i:02d}", ssml, f"{before} {after}.", pause_ms))
    for i, text in enumerate(HELD_COMPLETE):
        items.append(_item(f"heldcomplete{i:02d}", f"<speak>{text}</speak>", text, 0))
    return items


def held_apart_configs(smart: TurnEnd, llm: TurnEnd) -> list[tuple[str, TurnEnd, float]]:
    from asr_worker.turn_end_text import TextGuarded

    return [("smart-turn+guard@0.5", TextGuarded(smart), 0.5), ("smart-turn@0.5", smart, 0.5),
            ("llm@0.05", llm, 0.05), ("llm+guard@0.05", TextGuarded(llm), 0.05),
            ("llm@0.05 AND smart-turn@0.5", Verdict([(llm, 0.05), (smart, 0.5)], "all"), 0.5)]


def fixture_cases(fixtures_dir: Path) -> list[dict[str, Any]]:
    """Every transcribed fixture whole (complete when its text ends a sentence) and cut."""
    from common.audio import pcm16_to_float, read_wav

    cases = []
    for tsv in ("transcripts.tsv", "synthetic.tsv"):
        for line in (fixtures_dir / tsv).read_text().splitlines()[1:]:
            name, text = line.split("\t", 1)
            audio = pcm16_to_float(read_wav(fixtures_dir / name)[0])
            language = "sn" if name.startswith("q_sn") else "en"
            whole = text.rstrip()[-1:] in ".?!"
            cases.append({"name": name, "language": language, "audio": audio, "complete": whole})
            cases.append({"name": f"{name} cut", "language": language,
                          "audio": audio[: int(audio.size * CUT)], "complete": False})
    return cases


def score_fixtures(engine: Any, judges: dict[str, Timed],
                   cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each case's Whisper text (as it reaches the judge at a pause) and each judge's score."""
    rows = []
    for case in cases:
        text = engine.transcribe(case["audio"], case["language"]).text
        scores = {label: round(judge.probability(case["audio"], text, case["language"]), 4)
                  for label, judge in judges.items()}
        rows.append({"name": case["name"], "language": case["language"],
                     "complete": case["complete"], "text": text, "scores": scores})
    return rows


def fixture_accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Right verdicts per language, judge and threshold (complete above, incomplete below)."""
    out: dict[str, Any] = {}
    grids = {"smart-turn": SMART_THRESHOLDS, "llm": LLM_THRESHOLDS}
    for language in sorted({row["language"] for row in rows}):
        mine = [row for row in rows if row["language"] == language]
        out[language] = {"cases": len(mine), "complete": sum(r["complete"] for r in mine)}
        for label, thresholds in grids.items():
            for t in thresholds:
                right = sum((r["scores"][label] >= t) == r["complete"] for r in mine)
                out[language][f"{label}@{t}"] = f"{right}/{len(mine)}"
    return out


def text_cases() -> list[dict[str, Any]]:
    """The fixtures' reference transcripts and the pause set's sentences, whole and cut at a
    word boundary: the text judge alone, without Whisper's reading of the audio."""
    from tests import turn_pause_set

    cases = []
    for line in (FIXTURES / "synthetic.tsv").read_text().splitlines()[1:]:
        name, text = line.split("\t", 1)
        words = text.split()
        cases.append({"name": name, "language": "sn" if name.startswith("q_sn") else "en",
                      "whole": text, "cut": " ".join(words[: max(1, int(len(words) * CUT))])})
    for before, after in turn_pause_set.PAUSED:
        cases.append({"name": before, "language": "en", "whole": f"{before} {after}.",
                      "cut": before})
    return cases


def score_texts(llm: TurnEnd) -> list[dict[str, Any]]:
    silent = np.zeros(0, np.float32)
    return [{**case, "p_whole": round(llm.probability(silent, case["whole"], case["language"]), 4),
             "p_cut": round(llm.probability(silent, case["cut"], case["language"]), 4)}
            for case in text_cases()]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cost(judge: Timed) -> dict[str, float]:
    calls = judge.calls_ms
    return {"calls": len(calls), "p50_ms": round(float(np.percentile(calls, 50)), 1),
            "p95_ms": round(float(np.percentile(calls, 95)), 1),
            "mean_ms": round(float(np.mean(calls)), 1)}


def load(settings: Any) -> tuple[Any, Timed, Timed, float]:
    """Whisper, Smart Turn and the LLM judge (for every language: Shona is measured too), and
    the resident memory the LLM judge added."""
    from asr_worker import turn_end_llm, turn_end_smart
    from asr_worker.registry import load_engine
    from common.models import resolve

    engine = KeptWhisper(load_engine(settings))
    smart = turn_end_smart.create(settings)
    before = rss_mb()
    llm = turn_end_llm.LlmTurnEnd.load(resolve(settings.llm_model, settings.models_dir),
                                       threads=settings.turn_end_threads,
                                       model_name=settings.llm_model,
                                       languages=frozenset({"en", "sn"}))
    llm.probability(np.zeros(0, np.float32), "hello", "en")  # the prefix into the KV cache
    return engine, Timed(smart, True), Timed(llm, False), round(rss_mb() - before, 1)


def main() -> dict[str, Any]:
    from common.settings import Settings

    settings = Settings()
    engine, smart, llm, llm_rss = load(settings)
    fixtures = score_fixtures(engine, {"smart-turn": smart, "llm": llm}, fixture_cases(FIXTURES))
    fixture_cost = {"smart-turn": cost(smart), "llm": cost(llm)}
    texts = score_texts(llm)
    from tests import turn_pause_set

    rows = pause_set_rows(engine, judge_configs(smart, llm), settings, turn_pause_set.generate())
    held = pause_set_rows(engine, held_apart_configs(smart, llm), settings, held_apart_items())
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": llm.info(), "llm_judge_rss_mb": llm_rss, "threads": settings.turn_end_threads,
        "cost_per_call_fixtures": fixture_cost,
        "cost_per_call_all": {"smart-turn": cost(smart), "llm": cost(llm)},
        "pause_set_en": rows, "held_apart_en": held,
        "fixtures": fixtures, "fixture_accuracy": fixture_accuracy(fixtures),
        "texts": texts,
    }
    RESULTS.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    summary = main()
    print(json.dumps({k: summary[k] for k in ("llm_judge_rss_mb", "cost_per_call_all",
                                              "fixture_accuracy")}, indent=1))
