"""Text normalization before G2P: numbers, money, times, dates... written out as words.

One scanner for every language pack: a single regular expression cuts the text into pieces
(a URL, an e-mail, a phone number, a date, a time, an amount, a percentage, an ordinal, a
measure, a plain number, a word, a clause mark, white space, any other character), and the
pack's `Reader` says each piece in its own words. Every character of the input lands in exactly
one piece, so nothing is dropped unnoticed: a piece is either said (words), a pause (a clause
mark), silent punctuation the G2P keeps (quotes, brackets, dashes), or an unknown symbol, which
is read with the pack's word for "symbol", logged at debug level and counted in
`inzwa_tts_unknown_symbols_total`.

It runs per phrase on the TTS hot path: one `finditer` over the phrase and a dictionary lookup
per piece (a few tens of microseconds for a sentence; `bench_normalize` in the tests prints it).

Day-first dates: "12/03/2025" is 12 March (Zimbabwe, South Africa and the UK write the day first).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from typing import ClassVar, Literal, NamedTuple

log = logging.getLogger(__name__)

Kind = Literal["say", "word", "mark", "silent", "space", "unknown"]

# ASCII digits only: `\d` would take other scripts' digits, which the readers were not written for.
# Thousands grouped with commas, or with the no-break spaces typesetting uses ("5\u00a0000").
NUM = r"[0-9]{1,3}(?:[,\u00a0\u202f][0-9]{3})+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?"
MONTHS: dict[str, int] = {
    **{m: i for i, m in enumerate(
        ("january", "february", "march", "april", "may", "june", "july", "august", "september",
         "october", "november", "december"), 1)},
    **{m: i for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)},
    "sept": 9,
    **{m: i for i, m in enumerate(
        ("ndira", "kukadzi", "kurume", "kubvumbi", "chivabvu", "chikumi", "chikunguru",
         "nyamavhuvhu", "gunyana", "gumiguru", "mbudzi", "zvita"), 1)},
}
# English month names in any case; "May", the abbreviations and the Shona names only
# capitalised ("mbudzi" is also a goat, "may" a verb).
_MONTH_NAMES = (
    "(?i:january|february|march|april|june|july|august|september|october|november|december)|"
    + "|".join(sorted((m.capitalize() for m in [*list(MONTHS)[12:], "may"]), key=len, reverse=True))
)
_MONTH = rf"(?:{_MONTH_NAMES})"  # a dot after "Jan." stays a mark: it may end the sentence
_ORD = r"(?:st|nd|rd|th)"
_AMPM = r"[aApP]\.?[mM]\b\.?(?=\s|$|[,;:!?)])"
_CURRENCY = r"US\$|Z\$|\$|£|€|(?<![A-Za-z])(?:ZWL|ZWG|ZiG|USD|ZAR|GBP|EUR|R)(?=\s?[0-9])"
_MAGNITUDE = r"(?:\s?(?:million|billion|miriyoni|bhiriyoni|bn|m|k)(?![A-Za-z]))?"
UNITS = ("km/h", "km", "kg", "cm", "mm", "ml", "°C", "°F", "°", "m", "l", "g")
_UNIT = "(?:" + "|".join(re.escape(u) for u in UNITS) + r")(?![A-Za-z])"
_NEG = r"(?:(?<![\w.])[-−](?=[$£€0-9A-Z]))?"

_PIECES = re.compile(
    rf"""
    (?P<space>\s+)
    # Most of a phrase: a lower-case word that nothing below could start (no e-mail, URL,
    # abbreviation or glued number follows it); tried first, it keeps the scan cheap.
  | (?P<plain>[a-z]+(?:'[a-z]+)*(?![\w@.:/'’-]))
  | (?P<url>(?:https?://|www\.)[^\s<>"']*[^\s<>"'.,;:!?)\]])
  | (?P<email>[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)
  | (?P<phone>(?<![0-9])(?:\+[0-9]{{1,3}}(?:[ -]?[0-9]{{2,4}}){{2,4}}
        |0[0-9]{{2,3}}(?:[ -][0-9]{{3,4}}){{1,2}}|0[0-9]{{9}})(?![0-9]))
  | (?P<date_iso>(?<![0-9])[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}(?![0-9]))
  | (?P<date_num>(?<![0-9])[0-9]{{1,2}}[/.][0-9]{{1,2}}[/.](?:[0-9]{{4}}|[0-9]{{2}})(?![0-9]))
  | (?P<date_dmy>(?<![0-9])[0-9]{{1,2}}{_ORD}?\s(?:of\s)?{_MONTH}(?![A-Za-z])
        (?:,?\s[0-9]{{4}}(?![0-9]))?)
  | (?P<date_mdy>(?<![A-Za-z]){_MONTH}\s(?:[0-9]{{4}}|[0-9]{{1,2}}{_ORD}?(?:,?\s[0-9]{{4}})?)
        (?![0-9]))
  | (?P<time>(?<![0-9])(?:[01]?[0-9]|2[0-3])(?::|h)[0-5][0-9](?:\s?{_AMPM})?(?![0-9]))
  | (?P<time_ampm>(?<![0-9.,])(?:1[0-2]|0?[0-9])(?:\.[0-5][0-9])?\s?{_AMPM})
  | (?P<money>{_NEG}(?:{_CURRENCY})\s?(?:{NUM}){_MAGNITUDE})
  | (?P<money_after>(?<![0-9])(?:{NUM})\s?(?:USD|ZWL|ZWG|ZiG|ZAR|GBP|EUR)(?![A-Za-z]))
  | (?P<percent>{_NEG}(?<![0-9])(?:{NUM})\s?%)
  | (?P<ordinal>(?<![0-9])[0-9]+{_ORD}(?![A-Za-z]))
  | (?P<measure>(?<![0-9])(?:{NUM})\s?{_UNIT})
  | (?P<number>{_NEG}(?<![0-9])(?:{NUM}))
  | (?P<abbr>\b(?:Dr|Mr|Mrs|Ms|Prof|Hon|Eng|e\.g|i\.e|vs)\.(?=\s*\w)|\bNo\.(?=\s?[0-9]))
  | (?P<word>[^\W\d_]+(?:['’][^\W\d_]*)*)
  | (?P<mark>[.!?…]+|[,;:])
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)

# Punctuation that is neither said nor a clause break: the G2P keeps it as a silent segment.
SILENT = frozenset("\"'“”‘’«»„‚()[]{}<>-‐‑‒–—*_`~|\\^·•")


class Piece(NamedTuple):
    """A stretch text[start:end] and what is said for it."""

    start: int
    end: int
    said: str
    kind: Kind


@dataclass
class Context:
    """What the reader may look at around a piece: the words before it (lower case)."""

    previous: str = ""  # the last word piece since the last clause mark
    pieces: list[Piece] = field(default_factory=list)

    def last_spoken(self) -> Piece | None:
        return next((p for p in reversed(self.pieces) if p.kind != "space"), None)


class Number(NamedTuple):
    whole: int
    fraction: str | None  # the digits after the point, as written
    digits: str  # the whole part as written, separators removed


def parse_number(text: str) -> Number:
    whole, _, fraction = ungroup(text).partition(".")
    return Number(int(whole), fraction or None, whole)


def ungroup(text: str) -> str:
    """"12,500" / "12\u00a0500" -> "12500"."""
    return text.replace(",", "").replace("\u00a0", "").replace("\u202f", "")


class Reader:
    """What a language says for each kind of piece; a pack subclasses it (sn_normalize, en_normalize)."""

    language = ""
    symbol_word = "symbol"  # said for a character no rule covers
    domains: ClassVar[dict[str, str]] = {}  # parts of host names: "com", "zw"
    dotted: ClassVar[dict[str, str]] = {}  # abbreviations said only with their dot: "No. 5"

    def number(self, text: str, negative: bool, ctx: Context) -> str:
        raise NotImplementedError

    def money(self, currency: str, amount: Number, magnitude: str, negative: bool) -> str:
        raise NotImplementedError

    def percent(self, words: str) -> str:
        raise NotImplementedError

    def ordinal(self, n: int, ctx: Context) -> str:
        raise NotImplementedError

    def time(self, hour: int, minute: int, period: str) -> str:
        raise NotImplementedError

    def date(self, day: int | None, month: int, year: int | None) -> str:
        raise NotImplementedError

    def digits(self, digits: str) -> str:
        raise NotImplementedError

    def measure(self, amount: Number, unit: str) -> str:
        raise NotImplementedError

    def word(self, word: str) -> str:
        raise NotImplementedError

    def letters(self, text: str) -> str:
        raise NotImplementedError

    def symbol(self, char: str) -> str | None:
        raise NotImplementedError

    plus = "plus"
    dot = "dot"
    at = "at"
    range_word = "to"


def _pause(piece: Piece) -> str:
    return piece.said


class Normalizer:
    """Text in, the words a G2P reads out: `normalize` (a string) or `pieces` (traceable)."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.unknown = 0  # unknown symbols seen (also in the metric)

    def normalize(self, text: str) -> str:
        return join(self.pieces(text))

    def pieces(self, text: str) -> list[Piece]:
        text = unicodedata.normalize("NFC", text)
        ctx = Context()
        for match in _PIECES.finditer(text):
            kind = match.lastgroup or "other"
            said, piece_kind = getattr(self, "_" + kind)(match.group(), ctx, match)
            piece = Piece(match.start(), match.end(), said, piece_kind)
            ctx.pieces.append(piece)
            if piece_kind == "word":
                ctx.previous = match.group().lower()
            elif piece_kind == "mark":
                ctx.previous = ""
        return ctx.pieces

    # Each handler: (matched text, context, match) -> (what is said, piece kind).

    def _url(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        host = re.sub(r"^(?:https?://)?(?:www\.)?", "", text).split("/")[0].split("?")[0]
        return self._host(host), "say"

    def _host(self, host: str) -> str:
        return f" {self.reader.dot} ".join(self._host_part(part) for part in host.split(".") if part)

    def _host_part(self, part: str) -> str:
        lexicon = self.reader.domains.get(part.lower()) or self.reader.word(part)
        if lexicon != part:
            return lexicon
        if len(part) <= 2 or not re.search(r"[aeiou]", part, re.I) or not part.isalpha():
            return self.reader.letters(part)
        return part

    def _email(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        user, _, host = text.partition("@")
        users = " ".join(self._host_part(p) for p in re.split(r"[._%+-]+", user) if p)
        return f"{users} {self.reader.at} {self._host(host)}", "say"

    def _phone(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        plus = text.startswith("+")
        groups = [g for g in re.split(r"[ -]", text.lstrip("+")) if g]
        if len(groups) == 1 and len(groups[0]) == 10:  # 0772123456 as 0772 123 456
            groups = [groups[0][:4], groups[0][4:7], groups[0][7:]]
        said = ", ".join(self.reader.digits(g) for g in groups)
        return (f"{self.reader.plus} {said}" if plus else said), "say"

    def _date_iso(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        year, month, day = (int(p) for p in text.split("-"))
        return self._date(text, day, month, year)

    def _date_num(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        day, month, year = (int(p) for p in re.split(r"[/.]", text))
        year = year + 2000 if year < 100 else year  # "12/03/25": this century
        return self._date(text, day, month, year)

    def _date(self, text: str, day: int | None, month: int,
              year: int | None) -> tuple[str, Kind]:
        if not 1 <= month <= 12 or (day is not None and not 1 <= day <= 31):
            return self._digits_in(text), "say"  # not a date after all: read what is written
        return self.reader.date(day, month, year), "say"

    def _digits_in(self, text: str) -> str:
        return " ".join(self.reader.number(n, False, Context()) for n in re.findall(r"[0-9]+", text))

    def _date_dmy(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        day, month, year = _DMY.match(text).groups()  # type: ignore[union-attr]
        return self._date(text, int(day), MONTHS[month.lower()], int(year) if year else None)

    def _date_mdy(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        month, first, year = _MDY.match(text).groups()  # type: ignore[union-attr]
        if len(first) == 4:
            return self._date(text, None, MONTHS[month.lower()], int(first))
        return self._date(text, int(first), MONTHS[month.lower()], int(year) if year else None)

    def _time(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        hour, minute, period = _TIME.match(text).groups()  # type: ignore[union-attr]
        return self.reader.time(int(hour), int(minute), _period(period)), "say"

    def _time_ampm(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        hour, minute, period = _TIME_AMPM.match(text).groups()  # type: ignore[union-attr]
        return self.reader.time(int(hour), int(minute or 0), _period(period)), "say"

    def _money(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        neg, currency, amount, magnitude = _MONEY.match(text).groups()  # type: ignore[union-attr]
        return self.reader.money(currency, parse_number(amount), magnitude or "", bool(neg)), "say"

    def _money_after(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        amount, currency = _MONEY_AFTER.match(text).groups()  # type: ignore[union-attr]
        return self.reader.money(currency, parse_number(amount), "", False), "say"

    def _percent(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        body = text.rstrip("%").strip()
        negative = body[0] in "-−"
        words = self.reader.number(body.lstrip("-−"), negative, Context())
        return self.reader.percent(words), "say"

    def _ordinal(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        return self.reader.ordinal(int(text[:-2]), ctx), "say"

    def _measure(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        amount, unit = _MEASURE.match(text).groups()  # type: ignore[union-attr]
        return self.reader.measure(parse_number(amount), unit), "say"

    def _number(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        negative = text[0] in "-−"
        return self.reader.number(text.lstrip("-−"), negative, ctx), "say"

    def _abbr(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        bare = text.rstrip(".")
        return self.reader.dotted.get(bare) or self.reader.word(bare), "say"

    def _plain(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        return self._word(text, ctx, m)

    def _word(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        said = self.reader.word(text)
        return said, ("word" if said == text else "say")

    def _mark(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        return text.replace("…", "..."), "mark"

    def _space(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        return " ", "space"

    def _other(self, text: str, ctx: Context, m: re.Match[str]) -> tuple[str, Kind]:
        if text in "-–—" and _between_numbers(ctx, m):
            return self.reader.range_word, "say"
        if text in SILENT or (text == "#" and not m.string[m.end():m.end() + 1].isdigit()):
            return text, "silent"  # "#" is "number" before a digit, markdown otherwise
        if unicodedata.category(text) == "Cf":  # zero-width space/joiner, direction marks: unseen,
            return "", "space"  # so unsaid (a text of only these has nothing to say)
        named = self.reader.symbol(text)
        if named is not None:
            return named, "say"
        return self._unknown(text), "unknown"

    def _unknown(self, char: str) -> str:
        self.unknown += 1
        count_unknown(self.reader.language)
        # The code point only, never the text around it (transcripts stay out of the logs).
        log.debug("no reading for U+%04X (%s); said as %r", ord(char),
                  unicodedata.name(char, "unnamed"), self.reader.symbol_word)
        return self.reader.symbol_word


def _between_numbers(ctx: Context, m: re.Match[str]) -> bool:
    """A dash with a number (or an amount, a time...) on both sides: "5-10", "$5 – $10"."""
    before = ctx.last_spoken()
    if before is None or before.kind != "say" or not m.string[before.start:before.end][-1:].isalnum():
        return False
    return bool(_RANGE_AFTER.match(m.string, m.end()))


_RANGE_AFTER = re.compile(r"\s?(?:[0-9$£€]|US\$|R[0-9])")
_DMY = re.compile(rf"([0-9]{{1,2}}){_ORD}?\s(?:of\s)?({_MONTH_NAMES})\.?(?:,?\s([0-9]{{4}}))?")
_MDY = re.compile(rf"({_MONTH_NAMES})\.?\s([0-9]{{4}}|[0-9]{{1,2}}){_ORD}?(?:,?\s([0-9]{{4}}))?")
_TIME = re.compile(rf"([0-9]{{1,2}})(?::|h)([0-9]{{2}})(?:\s?({_AMPM}))?")
_TIME_AMPM = re.compile(rf"([0-9]{{1,2}})(?:\.([0-9]{{2}}))?\s?({_AMPM})")
_MONEY = re.compile(rf"([-−])?({_CURRENCY})\s?({NUM})\s?([A-Za-z]+)?")
_MONEY_AFTER = re.compile(rf"({NUM})\s?([A-Za-z]+)")
_MEASURE = re.compile(rf"({NUM})\s?({_UNIT})")


def _period(text: str | None) -> str:
    """"am", "pm" or "" from "a.m.", "PM"..."""
    return "" if not text else text[0].lower() + "m"


def join(pieces: list[Piece]) -> str:
    """The said text: pieces kept apart by one space (a number glued to a word is its own
    word), clause marks and silent punctuation kept where they were."""
    out: list[str] = []
    for piece in pieces:
        if piece.kind == "space":
            out.append(" ")
        elif piece.kind in ("mark", "silent"):
            out.append(piece.said)
        elif piece.said:
            out.append(f" {piece.said} ")
    return " ".join("".join(out).split())


def count_unknown(language: str) -> None:
    from common.metrics import TTS_UNKNOWN_SYMBOLS

    TTS_UNKNOWN_SYMBOLS.labels(language).inc()
