"""The espeak-ng phonemizer: real espeak-ng output, clause punctuation, process handling."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tts_worker.phonemizer import (
    EspeakPhonemizer,
    PhonemizerError,
    clean_ipa,
    normalize_text,
    split_clauses,
)

ZWJ = "\u200d"


@pytest.fixture(scope="module")
def phonemizer() -> Iterator[EspeakPhonemizer]:
    with EspeakPhonemizer("en-us") as instance:
        yield instance


def test_english_words_give_expected_phonemes(phonemizer: EspeakPhonemizer) -> None:
    (hello,) = phonemizer.phonemize("hello")
    assert "h" in hello and "l" in hello
    assert "ˈ" in hello  # stress marks are kept: Piper's map has them
    (world,) = phonemizer.phonemize("world")
    assert world.startswith("w") and "d" in world
    (think,) = phonemizer.phonemize("think")
    assert "θ" in think and "ŋ" in think


def test_output_has_no_zero_width_joiner_or_separators(phonemizer: EspeakPhonemizer) -> None:
    text = "Hello there, how are you? I am fine; thank you: really! Eight, nine, ten."
    sentences = phonemizer.phonemize(text)
    joined = "".join(sentences)
    assert joined
    assert ZWJ not in joined
    assert "_" not in joined and "\n" not in joined
    assert "  " not in joined


def test_clause_punctuation_is_kept(phonemizer: EspeakPhonemizer) -> None:
    sentences = phonemizer.phonemize("Hello, world. How are you? I'm fine; thanks: really!")
    assert len(sentences) == 3
    first, second, third = sentences
    assert ", " in first and first.endswith(".")
    assert first.count(".") == 1
    assert second.endswith("?")
    assert "; " in third and ": " in third and third.endswith("!")


def test_a_clause_with_nothing_to_say_leaves_no_stray_mark(
    phonemizer: EspeakPhonemizer,
) -> None:
    sentences = phonemizer.phonemize("Hello, (). Fine, \"\". Done")
    assert len(sentences) == 3
    assert all(sentence.endswith(".") and "," not in sentence for sentence in sentences)


def test_unterminated_text_ends_with_a_full_stop(phonemizer: EspeakPhonemizer) -> None:
    (sentence,) = phonemizer.phonemize("good morning")
    assert sentence.endswith(".")
    assert " " in sentence  # two words


def test_text_starting_with_a_dash_is_text_not_an_option(
    phonemizer: EspeakPhonemizer,
) -> None:
    for text in ("-v hello", "--help me", "--version"):
        sentences = phonemizer.phonemize(text)
        assert len(sentences) == 1, text
        assert "eSpeak" not in sentences[0] and "Usage" not in sentences[0]
    assert "h" in phonemizer.phonemize("-v hello")[0]


def test_empty_and_unspeakable_text_gives_nothing(phonemizer: EspeakPhonemizer) -> None:
    assert phonemizer.phonemize("") == []
    assert phonemizer.phonemize("   \n\t ") == []
    assert phonemizer.phonemize("*** ## ``") == []
    assert phonemizer.phonemize("...") == []


def test_markdown_symbols_are_not_spoken(phonemizer: EspeakPhonemizer) -> None:
    assert phonemizer.phonemize("**bold** `code`") == phonemizer.phonemize("bold code")


def test_many_calls_to_the_warm_process_agree(phonemizer: EspeakPhonemizer) -> None:
    expected = phonemizer.phonemize("The capital of Zimbabwe is Harare.")
    for _ in range(20):
        assert phonemizer.phonemize("The capital of Zimbabwe is Harare.") == expected


def test_long_text_is_phonemized_whole(phonemizer: EspeakPhonemizer) -> None:
    words = ["alpha"] * 400  # well over espeak-ng's 1000-byte line buffer
    (sentence,) = phonemizer.phonemize(" ".join(words))
    assert sentence.count(" ") == len(words) - 1


def test_a_killed_process_is_restarted() -> None:
    with EspeakPhonemizer("en-us") as phonemizer:
        before = phonemizer.phonemize("one, two.")
        assert phonemizer._proc is not None
        phonemizer._proc.kill()
        phonemizer._proc.wait()
        assert phonemizer.phonemize("one, two.") == before


def test_missing_binary_is_a_clear_error() -> None:
    with pytest.raises(PhonemizerError, match="not found"):
        EspeakPhonemizer("en-us", binary="espeak-ng-that-does-not-exist")


def test_unknown_voice_is_a_clear_error() -> None:
    with pytest.raises(PhonemizerError, match="xx-nope"):
        EspeakPhonemizer("xx-nope")


def test_a_hung_espeak_times_out(tmp_path: Path) -> None:
    # Answers the start-up probe, then hangs on real text.
    script = tmp_path / "fake-espeak"
    script.write_text(
        '#!/bin/sh\nread line\nif [ "$line" = qxzqj ]; then echo S; exit 0; fi\nexec sleep 30\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    phonemizer = EspeakPhonemizer("en-us", binary=os.fspath(script), timeout_s=0.5)
    with pytest.raises(PhonemizerError, match="did not answer"):
        phonemizer.phonemize("hello")
    assert phonemizer._proc is None  # the hung process was killed


def test_split_clauses_keeps_numbers_and_abbreviations_whole() -> None:
    clauses = split_clauses("Dr. Smith paid 1,000 dollars, 3.5 each. Done")
    assert [(c.text, c.terminator) for c in clauses] == [
        ("Dr. Smith paid 1,000 dollars", ","),
        ("3.5 each", "."),
        ("Done", "."),
    ]
    assert [c.terminator for c in split_clauses("Really?! Wait... ok")] == ["?", ".", "."]


def test_normalize_text() -> None:
    assert normalize_text("  **Hi**\n\n# there  ") == "Hi there"
    assert normalize_text("yes \u2014 no") == "yes, no"
    assert normalize_text("- first item\n- second") == "first item second"
    assert normalize_text("well-known") == "well-known"
    assert normalize_text("a\x00b\x07c") == "a b c"


def test_clean_ipa_strips_joiners_and_language_switches() -> None:
    assert clean_ipa(f"h{ZWJ}ə\u200bl(fr)o(en)\n") == "həlo"
    assert clean_ipa("fəsˈɑːd") == "fəsˈɑːd"
    assert clean_ipa("ç") == "c\u0327"  # decomposed, as Piper's maps hold it
