"""Cut a token stream into phrases for TTS while the LLM keeps generating.

The first phrase is cut early (at the first clause break once it has a couple of words) so the
first audio comes soon; later phrases end at sentence breaks, which gives the voice whole
sentences to shape. A break only counts when whitespace follows the mark, so "3.5" or "e.g."
inside a word never splits.

A phrase is never cut inside a number, a time, a date or an amount written with spaces
("$ 5", "10 am", "12 March 2025", "March 12, 2025", "5 - 10", "5 000", "50 %"): each pack's
normalizer reads such a group as one piece, and it only can when the group arrives in one
phrase. Where the words after a cut have not arrived yet, and the words before it could go on
("12", "March", "$"), the cutter waits for the next token.
"""

from __future__ import annotations

import re

from common.languages.normalize import MONTHS, UNITS

CLAUSE_MARKS = ",;:.!?"
SENTENCE_MARKS = ".!?;:"
_BREAK = re.compile(r"[,;:.!?…]+[\"')\]]*\s")
_SPACE = re.compile(r"\s+")
# A word that is, or ends, a number, time, date or amount: "5", "12,500", "$5", "10:30", "3rd".
_NUMERIC = re.compile(r"^[(\"']?[-−+]?(?:US\$|Z\$|[$£€])?[0-9][0-9,./:h-]*(?:st|nd|rd|th)?$")
_CURRENCY = frozenset({"$", "US$", "Z$", "£", "€", "R", "ZWL", "ZWG", "ZiG", "USD", "ZAR", "GBP",
                       "EUR"})
_RANGE = frozenset({"-", "–", "—", "to", "kusvika"})
# What may follow a number inside one spoken group.
_AFTER_NUMBER = frozenset({"am", "pm", "a.m.", "p.m.", "a.m", "p.m", "%", "h", "million",
                           "billion", "bn", "miriyoni", "bhiriyoni", *UNITS, *MONTHS,
                           *(c.lower() for c in _CURRENCY), *_RANGE})
_MAX_HOLD = 4  # a group never holds back more than this many times max_chars of text


def joins(left: str, right: str | None) -> bool:
    """Whether the words `left` and `right` belong to one number/time/date/amount group, so
    that a phrase must not be cut between them. `right` None: not arrived (or not whole) yet."""
    bare = left.rstrip(")\"'")
    if bare.endswith(","):  # "March 12," / "12 March," + "2025"
        core = bare[:-1]
        dated = bool(_NUMERIC.match(core)) or core.lower() in MONTHS
        return dated and (right is None or bool(re.match(r"[0-9]{4}\b", right)))
    if bare[-1:] in ".!?;:" and not _NUMERIC.match(bare):
        return False
    starts_number = right is None or bool(re.match(r"[-−]?(?:US\$|Z\$|[$£€0-9])", right))
    if bare in _CURRENCY or bare.lower() in _RANGE or bare.lower() in MONTHS:
        return starts_number
    if _NUMERIC.match(bare):
        return starts_number or (right or "").lower().rstrip(".,;:!?") in _AFTER_NUMBER
    return False


def _first_word(tail: str) -> str | None:
    """The first whole word of `tail`; None while it may still grow (no space after it yet)."""
    words = tail.split()
    if not words or (len(words) == 1 and not tail[-1:].isspace()):
        return None
    return words[0]


class PhraseCutter:
    def __init__(
        self,
        *,
        first_min_words: int = 2,
        first_max_words: int = 4,
        min_words: int = 3,
        max_chars: int = 160,
    ) -> None:
        self.first_min_words = first_min_words
        self.first_max_words = first_max_words
        self.min_words = min_words
        self.max_chars = max_chars
        self._buffer = ""
        self._emitted = 0

    def feed(self, token: str) -> list[str]:
        self._buffer += token
        phrases = []
        while (phrase := self._cut()) is not None:
            phrases.append(phrase)
        return phrases

    def discard(self) -> str:
        """Drop the unfinished fragment (a reply cut off mid-sentence); returns what it was."""
        rest, self._buffer = self._buffer, ""
        return rest

    def flush(self) -> list[str]:
        rest, self._buffer = self._buffer.strip(), ""
        if rest:
            self._emitted += 1
            return [rest]
        return []

    def _cut(self) -> str | None:
        first = self._emitted == 0
        marks = CLAUSE_MARKS if first else SENTENCE_MARKS
        min_words = self.first_min_words if first else self.min_words
        for match in _BREAK.finditer(self._buffer):
            head = self._buffer[: match.end()]
            if head.rstrip()[-1] not in marks and not self._too_long(head):
                continue
            if len(head.split()) >= min_words and self._safe(match.end()):
                return self._take(match.end())
        if first and len(self._buffer.split()) > self.first_max_words:
            # No break yet in a long opening: cut at the last word boundary outside a group.
            phrase = self._cut_at_word()
            if phrase is not None:
                return phrase
        if len(self._buffer) > _MAX_HOLD * self.max_chars:
            return self._take(self._buffer.rstrip().rfind(" ") + 1)  # bounded: never hold more
        return None

    def _safe(self, end: int) -> bool:
        """A cut at `end` does not split a number, time, date or amount."""
        head = self._buffer[:end].split()
        return not head or not joins(head[-1], _first_word(self._buffer[end:]))

    def _cut_at_word(self) -> str | None:
        spaces = [m.end() for m in _SPACE.finditer(self._buffer.rstrip())]
        for end in reversed(spaces):
            if self._safe(end):
                return self._take(end)
        return None

    def _too_long(self, head: str) -> bool:
        return len(head) >= self.max_chars

    def _take(self, end: int) -> str | None:
        phrase, self._buffer = self._buffer[:end].strip(), self._buffer[end:]
        if not phrase:
            return None
        self._emitted += 1
        return phrase
