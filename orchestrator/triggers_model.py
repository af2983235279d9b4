"""The fast frustration classifier: multinomial naive Bayes over words, word pairs and the
character 4-grams inside words, trained at start from each language pack's labelled phrases.

Why this model: a few hundred labelled phrases per language are enough for naive Bayes and far
too few for anything bigger; training takes milliseconds, so the weights never need shipping;
scoring a transcript is a dictionary look-up per feature (tens of microseconds, the < 5 ms
budget of a final transcript many times over). Character n-grams carry Shona, which joins
prefixes to words ("ndashatirwa", "ndakashatirwa"), and English inflections alike.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_WORD = re.compile(r"[a-z']+")
SMOOTHING = 0.5  # Laplace-style add-k: a feature seen in neither class says nothing
# A word gives several character 4-grams that all say the same thing: counted fully, naive
# Bayes would believe one word many times over (a short "stop." read as certain anger).
CHAR_WEIGHT = 0.3


def normalize(text: str) -> str:
    """Lower case, apostrophes kept, everything else that is not a letter a space."""
    return " ".join(_WORD.findall(text.lower().replace("\u2019", "'")))


def features(text: str) -> list[str]:
    words = normalize(text).split()
    found = [f"w:{w}" for w in words]
    found += [f"b:{a}_{b}" for a, b in itertools.pairwise(words)]
    for word in words:
        padded = f"<{word}>"
        found += [f"c:{padded[i:i + 4]}" for i in range(max(1, len(padded) - 3))]
    return found


@dataclass
class NaiveBayes:
    """P(frustrated | text) from per-class feature log-likelihoods and a class prior."""

    weights: dict[str, float]  # log P(f | frustrated) - log P(f | calm)
    prior: float  # log P(frustrated) - log P(calm)
    unseen: float  # the weight of a feature seen in no phrase (0: says nothing)

    @classmethod
    def train(cls, frustrated: Iterable[str], calm: Iterable[str]) -> NaiveBayes:
        positive, negative = list(frustrated), list(calm)
        counts = [Counter(f for text in texts for f in features(text)) for texts in (positive, negative)]
        vocabulary = set(counts[0]) | set(counts[1])
        totals = [sum(c.values()) + SMOOTHING * len(vocabulary) for c in counts]
        weights = {f: math.log((counts[0][f] + SMOOTHING) / totals[0])
                   - math.log((counts[1][f] + SMOOTHING) / totals[1]) for f in vocabulary}
        prior = math.log(len(positive) / len(negative)) if positive and negative else 0.0
        return cls(weights, prior, 0.0)

    def score(self, text: str) -> float:
        """P(frustrated) in 0..1."""
        logit = self.prior + sum(self.weights.get(f, self.unseen) * _weight(f) for f in features(text))
        logit = max(-50.0, min(50.0, logit))  # long texts: keep exp() finite
        return 1.0 / (1.0 + math.exp(-logit))


def _weight(feature: str) -> float:
    return CHAR_WEIGHT if feature.startswith("c:") else 1.0


def precision_recall(model: NaiveBayes, labelled: Sequence[tuple[str, bool]],
                     threshold: float) -> tuple[float, float]:
    """Precision and recall of `score >= threshold` on (text, is_frustrated) pairs."""
    predicted = [(model.score(text) >= threshold, truth) for text, truth in labelled]
    hits = sum(1 for guess, truth in predicted if guess and truth)
    guessed = sum(1 for guess, _ in predicted if guess)
    actual = sum(1 for _, truth in predicted if truth)
    return (hits / guessed if guessed else 0.0, hits / actual if actual else 0.0)
