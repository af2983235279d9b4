"""Word error rate: text normalisation and word-level Levenshtein distance.

Used by the accuracy tests and benchmarks, and by the engine to spot repetition loops, so the
normalisation is deliberately simple and language-neutral (no English number or spelling rules).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

# Apostrophes join the word they sit in ("don't" -> "dont") instead of splitting it in two,
# so a transcript that writes "dont" and one that writes "don't" agree.
_APOSTROPHES = frozenset("'’ʼ`")


def _clean_char(char: str) -> str:
    if char in _APOSTROPHES:
        return ""
    # Punctuation (P*) and symbols (S*) separate words; everything else is kept.
    return " " if unicodedata.category(char)[0] in "PS" else char


def normalize(text: str) -> str:
    """Lowercase, strip punctuation and symbols, collapse whitespace."""
    folded = unicodedata.normalize("NFKC", text).lower()
    return " ".join("".join(_clean_char(c) for c in folded).split())


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions) between two word lists."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, start=1):
            substitution = previous[j - 1] + (ref_word != hyp_word)
            current.append(min(previous[j] + 1, current[j - 1] + 1, substitution))
        previous = current
    return previous[-1]


def _edits_and_words(reference: str, hypothesis: str) -> tuple[int, int]:
    ref_words = normalize(reference).split()
    hyp_words = normalize(hypothesis).split()
    return edit_distance(ref_words, hyp_words), len(ref_words)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Edits over reference words, after `normalize`.

    An empty reference scores 0.0 against an empty hypothesis and 1.0 against anything else
    (the usual division by zero is not useful in a test).
    """
    edits, words = _edits_and_words(reference, hypothesis)
    if words == 0:
        return 0.0 if edits == 0 else 1.0
    return edits / words


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> float:
    """Total edits over total reference words for (reference, hypothesis) pairs."""
    total_edits = total_words = 0
    for reference, hypothesis in pairs:
        edits, words = _edits_and_words(reference, hypothesis)
        total_edits += edits
        total_words += words
    if total_words == 0:
        return 0.0 if total_edits == 0 else 1.0
    return total_edits / total_words
