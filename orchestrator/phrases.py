"""Cut a token stream into phrases for TTS while the LLM keeps generating.

The first phrase is cut early (at the first clause break once it has a couple of words) so the
first audio comes soon; later phrases end at sentence breaks, which gives the voice whole
sentences to shape. A break only counts when whitespace follows the mark, so "3.5" or "e.g."
inside a word never splits.
"""

from __future__ import annotations

import re

CLAUSE_MARKS = ",;:.!?"
SENTENCE_MARKS = ".!?;:"
_BREAK = re.compile(r"[,;:.!?…]+[\"')\]]*\s")


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
            if len(head.split()) >= min_words:
                return self._take(match.end())
        if first and len(self._buffer.split()) > self.first_max_words:
            # No break yet in a long opening: cut at the last word boundary.
            return self._take(self._buffer.rstrip().rfind(" ") + 1)
        return None

    def _too_long(self, head: str) -> bool:
        return len(head) >= self.max_chars

    def _take(self, end: int) -> str | None:
        phrase, self._buffer = self._buffer[:end].strip(), self._buffer[end:]
        if not phrase:
            return None
        self._emitted += 1
        return phrase
