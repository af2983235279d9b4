"""End-of-turn accuracy on the labelled pause set (tests/turn_pause_set.py), offline.

Each generated utterance is fed in 20 ms frames through a real `AsrSession` (Whisper, webrtcvad,
the end-of-turn engine under test), as the ASR worker would. A final transcript sent before an
inner pause is over is a premature commit (the speaker then goes on: in the live system the
barge-in path cancels the reply, and the rest becomes a new turn); for every utterance the
delay from the acoustic end of speech to its final is the end-of-turn cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from asr_worker.interface import ASR
from asr_worker.session import AsrSession, Transcript
from asr_worker.turn_end import TurnEnd
from tests.turn_pause_set import PauseItem

FRAME = 640  # 20 ms of PCM16


@dataclass
class Outcome:
    name: str
    pause_ms: int
    finals: list[tuple[int, str]]  # (stream ms when sent, text)
    premature: bool
    recovered: bool  # premature, and the speech after the pause continued the same utterance
    end_delay_ms: int  # final of the whole utterance, after the acoustic end of speech
    scores: list[float]


def run_item(engine: ASR, item: PauseItem, turn_end: TurnEnd | None, *, silence_ms: int,
             pause_ms: int, threshold: float, wait_ms: int | None) -> Outcome:
    session = AsrSession(engine, language="en", silence_ms=silence_ms, pause_ms=pause_ms,
                         turn_end=turn_end, turn_end_threshold=threshold, turn_end_wait_ms=wait_ms)
    finals: list[tuple[int, str]] = []
    for index, offset in enumerate(range(0, len(item.pcm), FRAME)):
        for event in session.feed(item.pcm[offset : offset + FRAME], partials=False):
            if isinstance(event, Transcript) and event.is_final:
                finals.append(((index + 1) * 20, event.text))
    resumed_ms = item.pause_start_ms + item.pause_ms
    premature = bool(item.pause_ms) and any(at < resumed_ms for at, _ in finals)
    last = finals[-1][0] if finals else len(item.pcm) // 32
    return Outcome(item.name, item.pause_ms, finals, premature,
                   premature and session.continued > 0, last - item.speech_end_ms,
                   list(session.turn_end_scores))


def summarize(outcomes: list[Outcome], *, quick_ms: int) -> dict[str, Any]:
    """Premature commits on the paused items; for all items the end delay, and how many ended
    only on the timeout (a late end: more than `quick_ms` after the speech)."""
    paused = [o for o in outcomes if o.pause_ms]
    delays = [o.end_delay_ms for o in outcomes]
    late = [o for o in outcomes if o.end_delay_ms > quick_ms]
    return {
        "items": len(outcomes),
        "paused_items": len(paused),
        "premature_commits": sum(o.premature for o in paused),
        "premature_rate": round(sum(o.premature for o in paused) / max(1, len(paused)), 3),
        "premature_names": [o.name for o in paused if o.premature],
        "premature_recovered": sum(o.recovered for o in paused),
        "late_ends": len(late),
        "late_rate": round(len(late) / max(1, len(outcomes)), 3),
        "end_delay_ms_p50": float(np.percentile(delays, 50)),
        "end_delay_ms_p95": float(np.percentile(delays, 95)),
        "end_delay_ms_mean": round(float(np.mean(delays)), 1),
    }
