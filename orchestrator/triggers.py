"""Handoff triggers, evaluated on every final user turn, cheapest and surest first.

Tiers: an explicit request (the pack's patterns: a person asked for by name), then the fast
frustration classifier (orchestrator/triggers_model.py), then failure signals kept per session:
consecutive fallback replies, consecutive low-confidence transcripts, the same question asked
again and again. The first that fires wins; each has its own switch and threshold in settings
(`handoff_*`). The optional LLM tier (orchestrator/handoff_judge.py) is asked only when the
classifier is unsure, beside the reply.

Every firing is counted by kind (inzwa_handoff_triggers_total) and logged without the words
that caused it unless content logging is on.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from common.languages import handoff as handoff_data
from common.logs import content
from common.metrics import HANDOFF_TRIGGERS
from common.settings import Settings
from orchestrator.triggers_model import NaiveBayes, normalize

log = logging.getLogger(__name__)

TRIGGER_KINDS = ("explicit", "frustration", "fallbacks", "low_confidence", "repeated", "llm")
RECENT_TURNS = 6  # user turns remembered for the repeated-question signal
REPEAT_OVERLAP = 0.8  # word-set overlap (Jaccard) that makes two turns "the same question"


@dataclass(frozen=True)
class Firing:
    kind: str  # one of TRIGGER_KINDS
    evidence: str  # what fired it: the matched words, a score, a count (may hold content)
    score: float = 1.0
    at: float = field(default_factory=time.time)


@dataclass
class Signals:
    """One session's running failure signals."""

    low_confidence: int = 0  # consecutive finals under the threshold
    frustrated: int = 0  # consecutive turns the classifier called frustrated
    score: float = 0.0  # the classifier's P(frustrated) of the latest turn (the LLM tier asks when unsure)
    recent: deque[frozenset[str]] = field(default_factory=lambda: deque(maxlen=RECENT_TURNS))
    confidences: deque[float] = field(default_factory=lambda: deque(maxlen=20))  # for the context


class Triggers:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models = {code: NaiveBayes.train(d.frustrated, d.calm)
                       for code in handoff_data.codes() for d in [handoff_data.get(code)]}
        for kind in TRIGGER_KINDS:
            HANDOFF_TRIGGERS.labels(kind)  # declared at zero

    def evaluate(self, signals: Signals, language: str, text: str, confidence: float | None,
                 fallbacks: int = 0) -> Firing | None:
        """The trigger a final user turn fires, if any (and the session's signals updated)."""
        s = self.settings
        words = normalize(text)
        signals.confidences.append(1.0 if confidence is None else confidence)
        firing = self.explicit(language, words) if s.handoff_explicit else None
        firing = firing or self._frustration(signals, language, words)
        firing = firing or self._failures(signals, confidence, fallbacks)
        firing = firing or self._repeated(signals, words)
        if firing is not None:
            HANDOFF_TRIGGERS.labels(firing.kind).inc()
            log.info("handoff trigger fired", extra={"kind": firing.kind, "score": round(firing.score, 3),
                                                     "evidence": content(firing.evidence)})
        return firing

    @staticmethod
    def explicit(language: str, words: str) -> Firing | None:
        data = handoff_data.get(language)
        if any(p.search(words) for p in data.not_explicit):
            return None
        for pattern in data.explicit:
            match = pattern.search(words)
            if match:
                return Firing("explicit", match.group(0))
        return None

    def frustration(self, language: str, text: str) -> float:
        """P(frustrated) of one turn, by the language's classifier."""
        model = self.models.get(language) or self.models["en"]
        return model.score(text)

    def _frustration(self, signals: Signals, language: str, words: str) -> Firing | None:
        s = self.settings
        if not s.handoff_frustration or not words:
            return None
        score = signals.score = self.frustration(language, words)
        signals.frustrated = signals.frustrated + 1 if score >= s.handoff_frustration_threshold else 0
        if signals.frustrated >= s.handoff_frustration_turns:
            signals.frustrated = 0
            return Firing("frustration", words, score)
        return None

    def _failures(self, signals: Signals, confidence: float | None, fallbacks: int) -> Firing | None:
        s = self.settings
        if s.handoff_fallbacks and fallbacks >= s.handoff_fallbacks:
            return Firing("fallbacks", f"{fallbacks} fallback replies in a row")
        if confidence is None or not s.handoff_low_confidence_turns:
            return None
        low = confidence < s.handoff_low_confidence
        signals.low_confidence = signals.low_confidence + 1 if low else 0
        if signals.low_confidence >= s.handoff_low_confidence_turns:
            signals.low_confidence = 0
            return Firing("low_confidence", f"{s.handoff_low_confidence_turns} transcripts under "
                          f"{s.handoff_low_confidence}", confidence)
        return None

    def _repeated(self, signals: Signals, words: str) -> Firing | None:
        current = frozenset(words.split())
        same = sum(1 for earlier in signals.recent if _overlap(current, earlier) >= REPEAT_OVERLAP)
        signals.recent.append(current)
        wanted = self.settings.handoff_repeats
        if not wanted or not current or same + 1 < wanted:
            return None
        signals.recent.clear()
        return Firing("repeated", words, float(same + 1))


def _overlap(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0
