"""Tokens in, phrases out: the first phrase early, then whole sentences, nothing lost."""

from __future__ import annotations

import re

from orchestrator.phrases import PhraseCutter


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
