"""The safety filter's matching: text normalized the same way before every pattern.

Literal patterns are dodged by spelling: "Make  a BOMB", "make-a-bomb", "making bombs", a
zero-width space inside a word. So both the text and the patterns go through one normalization:
Unicode compatibility forms (full-width letters), case folding, invisible characters dropped,
punctuation and symbols turned into spaces, whitespace collapsed, and each word reduced by the
language's stemmer (English: plurals and -ing/-ed forms). A pattern is written in plain words
("make a bomb"); its words are stemmed when it is compiled, so "making bombs" meets "make a bomb"
as "mak a bomb" and "mak bomb" (the optional article is the pattern's business).

Each rule has a reason (self_harm, violence, weapons, ...) counted in
`inzwa_safety_refusals_total{direction, language, reason}` when it refuses something.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterable

from prometheus_client import Counter

SAFETY_REFUSALS = Counter(
    "inzwa_safety_refusals_total", "Texts refused by the safety filter, by direction and reason",
    ["direction", "language", "reason"],
)

Rule = str | tuple[str, str]  # a regex (reason "blocked") or (reason, regex)
Stemmer = Callable[[str], str]
DEFAULT_REASON = "blocked"

_WORD_IN_PATTERN = re.compile(r"(?<!\\)[^\W\d_]+")  # letter runs that are not regex escapes
_IRREGULAR_EN = {"made": "make", "built": "build", "dying": "die", "died": "die", "shot": "shoot"}
_SUFFIXES_EN = (("ies", "y"), ("ied", "y"), ("ing", ""), ("ed", ""), ("s", ""))


def identity(word: str) -> str:
    return word


def english_stem(word: str) -> str:
    """A deliberately small stemmer: enough that plurals and -ing/-ed forms meet their base word.

    Both sides are stemmed, so it only has to be consistent, not linguistically right.
    """
    word = _IRREGULAR_EN.get(word, word)
    for suffix, replacement in _SUFFIXES_EN:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[: len(word) - len(suffix)] + replacement
            break
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]  # make / mak(ing)
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiou":
        word = word[:-1]  # stabb(ing) / stab, kill / kil(ling)
    return word


def fold(text: str) -> str:
    """Compatibility forms, case, invisible characters, punctuation and whitespace normalized."""
    text = unicodedata.normalize("NFKC", text).casefold()
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category == "Cf":
            continue  # zero-width joiners, soft hyphens, direction marks: invisible, dropped
        kept.append(char if category[0] in "LN" else " ")
    return " ".join("".join(kept).split())


def normalize(text: str, stem: Stemmer = identity) -> str:
    """The text the patterns see."""
    return " ".join(stem(word) for word in fold(text).split())


def stem_pattern(pattern: str, stem: Stemmer) -> str:
    """The pattern with each plain word stemmed (and folded) like the text will be."""
    return _WORD_IN_PATTERN.sub(lambda m: stem(fold(m.group())), pattern)


@functools.lru_cache(maxsize=64)
def compiled(rules: tuple[Rule, ...], stem: Stemmer) -> tuple[tuple[str, re.Pattern[str]], ...]:
    out = []
    for rule in rules:
        reason, pattern = (DEFAULT_REASON, rule) if isinstance(rule, str) else rule
        out.append((reason, re.compile(stem_pattern(pattern, stem))))
    return tuple(out)


def refusal(rules: tuple[Rule, ...], stem: Stemmer, texts: Iterable[str]) -> str | None:
    """The reason of the first rule any of `texts` matches, or None."""
    patterns = compiled(rules, stem)
    if not patterns:
        return None
    for text in texts:
        seen = normalize(text, stem)
        for reason, pattern in patterns:
            if pattern.search(seen):
                return reason
    return None


def count(direction: str, language: str, reason: str) -> None:
    SAFETY_REFUSALS.labels(direction, language, reason).inc()
