"""Unit tests of the WER helpers used by the accuracy tests and the engine's loop guard."""

from __future__ import annotations

import pytest

from asr_worker.wer import corpus_wer, edit_distance, normalize, word_error_rate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("  And so   my\tfellow\nAmericans.  ", "and so my fellow americans"),
        ("Don't stop", "dont stop"),
        ("Don’t stop", "dont stop"),  # typographic apostrophe
        ("well-known (sort of)", "well known sort of"),
        ("Mhoro, makadii? Ndinoda kubatsirwa.", "mhoro makadii ndinoda kubatsirwa"),
        ("ÉCOLE", "école"),
        ("...!?", ""),
        ("", ""),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_edit_distance_counts_each_kind_of_edit() -> None:
    assert edit_distance(["a", "b", "c"], ["a", "b", "c"]) == 0
    assert edit_distance(["a", "b", "c"], ["a", "x", "c"]) == 1  # substitution
    assert edit_distance(["a", "b", "c"], ["a", "c"]) == 1  # deletion
    assert edit_distance(["a", "b", "c"], ["a", "b", "x", "c"]) == 1  # insertion
    assert edit_distance([], ["a", "b"]) == 2
    assert edit_distance(["a", "b"], []) == 2
    assert edit_distance(["a", "b"], ["b", "a"]) == 2


def test_word_error_rate_ignores_case_and_punctuation() -> None:
    assert word_error_rate("Has never been surpassed.", "has never been surpassed") == 0.0


def test_word_error_rate_is_edits_over_reference_words() -> None:
    reference = "in being comparatively modern"
    assert word_error_rate(reference, "in being comparatively mater") == pytest.approx(0.25)
    assert word_error_rate(reference, "in being") == pytest.approx(0.5)
    assert word_error_rate(reference, "") == pytest.approx(1.0)
    # Insertions can push the rate above 1.
    assert word_error_rate("yes", "yes yes yes") == pytest.approx(2.0)


def test_word_error_rate_with_empty_reference() -> None:
    assert word_error_rate("", "") == 0.0
    assert word_error_rate("", "thank you") == 1.0


def test_corpus_wer_weights_by_reference_length() -> None:
    pairs = [("one two three four", "one two three four"), ("five", "six")]
    # One edit over five reference words, not the mean of the per-pair rates (0.5).
    assert corpus_wer(pairs) == pytest.approx(0.2)
    assert corpus_wer([]) == 0.0
