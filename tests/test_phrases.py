"""Tokens in, phrases out: the first phrase early, then whole sentences, nothing lost."""

from __future__ import annotations

import re

import pytest

from orchestrator.phrases import PhraseCutter, joins


def cut(tokens: list[str], **options: int) -> list[str]:
    cutter = PhraseCutter(**options)
    phrases = []
    for token in tokens:
        phrases += cutter.feed(token)
    return phrases + cutter.flush()


def tokens_of(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text)


def test_first_phrase_is_cut_at_the_first_clause_break() -> None:
    phrases = cut(tokens_of("Sure thing, the capital of Zimbabwe is Harare. It is big."))
    assert phrases[0] == "Sure thing,"
    assert phrases[1:] == ["the capital of Zimbabwe is Harare.", "It is big."]


def test_first_phrase_waits_for_enough_words() -> None:
    phrases = cut(tokens_of("Well, I think so. Yes."))
    assert phrases[0] == "Well, I think so."


def test_later_phrases_end_at_sentences_not_commas() -> None:
    phrases = cut(tokens_of("Hello there. Harare, the capital, is large. Bulawayo is second."))
    assert phrases == ["Hello there.", "Harare, the capital, is large.", "Bulawayo is second."]


def test_a_mark_inside_a_word_is_not_a_break() -> None:
    phrases = cut(tokens_of("About 3.5 million people live there. That is a lot."), first_max_words=10)
    assert phrases == ["About 3.5 million people live there.", "That is a lot."]


def test_a_long_opening_without_punctuation_is_cut_at_a_word() -> None:
    text = "one two three four five six seven eight nine ten eleven twelve thirteen"
    phrases = cut(tokens_of(text), first_max_words=10)
    assert len(phrases[0].split()) <= 11
    assert " ".join(phrases) == text


def test_no_text_is_lost_or_reordered() -> None:
    text = ("Mhoro! Ndiri Inzwa, mubatsiri wako. Nhasi kuchanaya here? Handizivi, asi "
            "ndinogona kukubatsira. Zvakanaka")
    phrases = cut(tokens_of(text))
    assert " ".join(phrases) == text


def test_tokens_split_inside_words_and_marks() -> None:
    phrases = cut(["Hel", "lo", ",", " wor", "ld", ".", " Bye", "."])
    assert phrases == ["Hello, world.", "Bye."]


def test_empty_stream_gives_no_phrase() -> None:
    assert cut([]) == []
    assert cut(["  "]) == []


# --- Never inside a number, time, date or amount -------------------------------------------------

# Texts, and the groups in them that must each arrive inside one phrase.
GROUPED = [
    ("Tichasangana musi 12 March 2025 kuHarare tose.", ["12 March 2025"]),
    ("We meet on March 12, 2025 at the office, then lunch.", ["March 12, 2025"]),
    ("Mari yacho i $ 5 000 chete pamwedzi wega wega.", ["$ 5 000"]),
    ("Uyai na 10 am mangwana kuhofisi yedu yose.", ["10 am"]),
    ("Mitengo iri pakati pe 5 - 10 madhora pazuva.", ["5 - 10"]),
    ("The fee is US$ 1,500.50 per month, paid monthly.", ["US$ 1,500.50"]),
    ("Tinotanga 7:30 pm, tichipedza 9 pm. Uyai mese.", ["7:30 pm", "9 pm"]),
    ("Kubva 12 Kurume, 2025 kusvika Chivabvu 2026 zvichaenderera.", ["12 Kurume, 2025",
                                                                      "Chivabvu 2026"]),
    ("It rose by 12.5 % in 2025, and 3.5 % in 2024.", ["12.5 %", "3.5 %"]),
    ("Fonera +263 77 123 4567 kana 0242 700 000 nhasi.", ["+263 77 123 4567", "0242 700 000"]),
    ("Zvinodhura R 50 kana £ 3.20 kana € 15 chete.", ["R 50", "£ 3.20", "€ 15"]),
    ("Ndakaberekwa 25 December 1990 kuMutare.", ["25 December 1990"]),
]


def _tokenizations(text: str) -> list[list[str]]:
    """Word tokens, and chunks of 1, 2 and 3 characters: tokens that break inside every group
    (between "1" and "2", "10:" and "30", "$" and "5", "Mar" and "ch")."""
    return [tokens_of(text), *(re.findall(rf".{{1,{n}}}", text, re.S) for n in (1, 2, 3))]


@pytest.mark.parametrize(("text", "groups"), GROUPED)
def test_phrases_never_cut_inside_a_number_time_date_or_amount(text: str, groups: list[str]) -> None:
    for tokens in _tokenizations(text):
        for options in ({}, {"first_max_words": 2, "first_min_words": 1}, {"max_chars": 12}):
            phrases = cut(tokens, **options)
            assert " ".join(phrases) == text
            for group in groups:
                assert any(group in phrase for phrase in phrases), (group, phrases, options)


def test_the_cutter_still_cuts_next_to_numbers() -> None:
    """A number before a sentence end, or words around a group, still let a phrase end."""
    assert cut(tokens_of("Ndine mombe 25. Dzose dzakanaka.")) == ["Ndine mombe 25.",
                                                                  "Dzose dzakanaka."]
    phrases = cut(tokens_of("one two three four five six 7 eight nine ten"), first_max_words=4)
    assert phrases[0] == "one two three four"


def test_joins_tells_groups_from_plain_neighbours() -> None:
    assert joins("12", "March") and joins("March", "12") and joins("$", "5") and joins("10", "am")
    assert joins("5", "-") and joins("-", "10") and joins("12,", "2025") and joins("5", "000")
    assert joins("12", None) and joins("$", None)  # the next word has not arrived: wait
    assert not joins("12,", "vanhu") and not joins("25.", "Dzose") and not joins("mombe", "25")
    assert not joins("hello", None) and not joins("5", "vanhu")


def test_a_run_of_numbers_is_still_cut_within_bounds() -> None:
    text = " ".join(str(n) for n in range(200))
    phrases = cut(tokens_of(text), max_chars=40)
    assert " ".join(phrases) == text
    assert len(phrases) > 1 and max(len(p) for p in phrases[:-1]) <= 4 * 40 + 8
