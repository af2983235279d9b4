"""Handoff triggers per language (English and Shona): explicit requests, the frustration
classifier's precision/recall on held-apart phrases, and the failure signals (handoff area)."""

from __future__ import annotations

from typing import Any

import pytest

from common.languages import handoff as handoff_data
from common.metrics import HANDOFF_TRIGGERS
from common.settings import Settings
from orchestrator.triggers import Signals, Triggers
from orchestrator.triggers_model import NaiveBayes, normalize, precision_recall
from tests.handoff_heldout import HELDOUT

PRECISION_FLOOR = 0.85  # measured (threshold 0.8): en 1.00 / 1.00, sn 0.94 / 0.94 (precision / recall)
RECALL_FLOOR = 0.85

EXPLICIT = {
    "en": [
        ("I want to talk to a person", True),
        ("Can I speak with a real human please?", True),
        ("let me talk to an agent", True),
        ("Agent!", True),
        ("transfer me to a representative", True),
        ("put me through to someone", True),
        ("get me a human", True),
        ("I need a live agent", True),
        ("I don't want to talk to a person", False),
        ("what is the capital of zimbabwe", False),
        ("my travel agent booked the flight", False),
        ("a person I know lives in harare", False),
        ("how many people live in bulawayo", False),
    ],
    "sn": [
        ("Ndoda kutaura nemunhu", True),
        ("ndinoda kutaura nemunhu chaiye", True),
        ("ndiri kuda kutaura nemushandi", True),
        ("ndibatanidzei nemunhu", True),
        ("ndipei munhu chaiye", True),
        ("munhu ndapota", True),
        ("handidi kutaura nemunhu", False),
        ("guta guru reZimbabwe nderipi", False),
        ("munhu wese ari kufara nhasi", False),
        ("mhoro makadii", False),
    ],
}


def triggers(**overrides: Any) -> Triggers:
    return Triggers(Settings(_env_file=None, **overrides))  # type: ignore[call-arg]


@pytest.mark.parametrize("language", ["en", "sn"])
def test_explicit_requests_are_found_per_language(language: str) -> None:
    for text, wanted in EXPLICIT[language]:
        firing = Triggers.explicit(language, normalize(text))
        assert (firing is not None) == wanted, (language, text, firing)
        if firing is not None:
            assert firing.kind == "explicit" and firing.evidence


@pytest.mark.parametrize("language", ["en", "sn"])
def test_frustration_classifier_precision_recall_on_held_apart_phrases(language: str) -> None:
    data = handoff_data.get(language)
    trained = {normalize(t) for t in (*data.frustrated, *data.calm)}
    heldout = HELDOUT[language]
    assert not trained & {normalize(t) for t, _ in heldout}, "held-apart phrases leaked into training"
    assert sum(truth for _, truth in heldout) >= 15 and sum(not t for _, t in heldout) >= 15
    model = NaiveBayes.train(data.frustrated, data.calm)
    precision, recall = precision_recall(model, heldout, Settings().handoff_frustration_threshold)
    print(f"frustration classifier {language}: precision {precision:.3f} recall {recall:.3f} "
          f"on {len(heldout)} held-apart phrases")
    assert precision >= PRECISION_FLOOR and recall >= RECALL_FLOOR, (precision, recall)


def test_frustration_fires_after_the_configured_turns_in_a_row() -> None:
    t = triggers(handoff_frustration_turns=2)
    signals = Signals()
    assert t.evaluate(signals, "en", "this is useless", 0.9) is None  # one angry turn: not yet
    assert t.evaluate(signals, "en", "what is the weather", 0.9) is None  # calm again: reset
    assert t.evaluate(signals, "en", "you are not helping me at all", 0.9) is None
    firing = t.evaluate(signals, "en", "I am fed up with this", 0.9)
    assert firing is not None and firing.kind == "frustration" and firing.score >= 0.8
    assert triggers(handoff_frustration=False).evaluate(Signals(), "sn", "ndaneta nazvo", 1.0) is None


def test_failure_signals_fallbacks_low_confidence_and_repeats() -> None:
    t = triggers(handoff_fallbacks=3, handoff_low_confidence_turns=2, handoff_low_confidence=0.5,
                 handoff_repeats=3)
    assert t.evaluate(Signals(), "en", "hello", 1.0, fallbacks=2) is None
    fired = t.evaluate(Signals(), "en", "hello", 1.0, fallbacks=3)
    assert fired is not None and fired.kind == "fallbacks"
    low = Signals()
    assert t.evaluate(low, "en", "what is the time", 0.2) is None
    fired = t.evaluate(low, "en", "the weather please", 0.3)
    assert fired is not None and fired.kind == "low_confidence"
    again = Signals()
    assert t.evaluate(again, "sn", "nguva yei", 1.0) is None
    assert t.evaluate(again, "sn", "nguva yei?", 1.0) is None
    fired = t.evaluate(again, "sn", "Nguva yei", 1.0)
    assert fired is not None and fired.kind == "repeated" and fired.score == 3


def test_signals_that_are_off_never_fire_and_firings_are_counted_by_kind() -> None:
    t = triggers(handoff_fallbacks=0, handoff_low_confidence_turns=0, handoff_repeats=0,
                 handoff_explicit=False)
    signals = Signals()
    for _ in range(5):
        assert t.evaluate(signals, "en", "nguva yei", 0.01, fallbacks=9) is None
    assert t.evaluate(signals, "en", "I want to talk to a person", 1.0) is None  # explicit off
    before = HANDOFF_TRIGGERS.labels("explicit")._value.get()
    assert triggers().evaluate(Signals(), "sn", "ndoda kutaura nemunhu", 1.0) is not None
    assert HANDOFF_TRIGGERS.labels("explicit")._value.get() == before + 1
