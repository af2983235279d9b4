"""Integers and digit strings read out as Shona words, for the Shona TTS front end.

Shona numerals agree with the noun class of what is counted, so there is no single "right"
reading of a bare number. This module uses one consistent counting standard, the one in the
common published counting lists (abstract counting, nothing in particular being counted):

* 0-9 on their own: ziro (loanword), poshi, piri, tatu, ina, shanu, tanhatu, nomwe, sere,
  pfumbamwe.
* Tens: gumi (10); 20-90 are "makumi" + the multiplier with the class-6 concord ma-:
  makumi maviri, matatu, mana, mashanu, matanhatu, manomwe, masere, mapfumbamwe.
* Hundreds: zana (100); 200-900 are "mazana" + the same class-6 multipliers.
* Thousands: churu (1000); 2000-9000 are "zvuru" + the class-8 concord zvi-: zvuru zviviri,
  zvitatu, zvina, zvishanu, zvitanhatu, zvinomwe, zvisere, zvipfumbamwe. From 10 000 up the
  multiplier is read as a plain count after "zvuru": 25 000 = "zvuru makumi maviri neshanu".
* Parts are joined largest first, each later part prefixed with "ne" ("and"): ne + gumi =
  "negumi", ne + makumi = "nemakumi", ne + zana = "nezana". A trailing unit takes the
  class-9/10 form used in those counting lists: neimwe, nembiri, nenhatu, neina, neshanu,
  nenhanhatu, nenomwe, nesere, nepfumbamwe. So 11 = "gumi neimwe", 25 = "makumi maviri
  neshanu", 365 = "mazana matatu nemakumi matanhatu neshanu".

`expand_numbers` replaces digit strings inside text: integers up to 999 999 (also written with
comma thousands separators, "12,500"), decimals as "<integer> poindi <digits one by one>"
("3.5" -> "tatu poindi shanu"; "poindi" is the everyday loan of English "point", since Shona
has no settled native word for it), and strings that are not quantities read digit by digit:
a leading zero ("0772", phone numbers and codes) or more than six digits.

These readings have not been reviewed by a native speaker; dialects differ (motsi for poshi,
china for ina, "gumi nerimwe" for 11). Everything is in the tables below, easy to change.
"""

from __future__ import annotations

import re

MAX_NUMBER = 999_999

# Bare counting forms, also used when digits are read one by one.
_DIGITS = ("ziro", "poshi", "piri", "tatu", "ina", "shanu", "tanhatu", "nomwe", "sere", "pfumbamwe")
# Multipliers of makumi (tens) and mazana (hundreds): class-6 concord ma-.
_CLASS6 = ("", "", "maviri", "matatu", "mana", "mashanu", "matanhatu", "manomwe", "masere",
           "mapfumbamwe")
# Multipliers of zvuru (thousands): class-8 concord zvi-.
_CLASS8 = ("", "", "zviviri", "zvitatu", "zvina", "zvishanu", "zvitanhatu", "zvinomwe", "zvisere",
           "zvipfumbamwe")
# A unit that ends a compound number, after "ne": the class-9/10 forms of the counting lists.
_TRAILING_UNIT = ("", "imwe", "mbiri", "nhatu", "ina", "shanu", "nhanhatu", "nomwe", "sere",
                  "pfumbamwe")

_DECIMAL_POINT = "poindi"
# A whole number, with optional comma thousands separators ("12,500"), and an optional decimal
# part. ASCII digits only: `\d` would also match other scripts' digits, which int() reads but the
# tables here were not written for.
_NUMBER = re.compile(r"(?<![0-9])([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.([0-9]+))?(?![0-9])")


def number_to_shona(n: int) -> str:
    """Read an integer in 0..999 999 as Shona counting words (see the module docstring)."""
    if not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"number_to_shona reads 0..{MAX_NUMBER}, got {n}")
    if n < 10:
        return _DIGITS[n]
    thousands, rest = divmod(n, 1000)
    parts: list[str] = []
    if thousands:
        parts.append(_thousands(thousands))
    if rest:
        parts.extend(_below_thousand(rest, after_larger=bool(thousands)))
    return _join(parts)


def _thousands(count: int) -> str:
    """1000 * count for count in 1..999."""
    if count == 1:
        return "churu"
    if count < 10:
        return f"zvuru {_CLASS8[count]}"
    # Ten thousand and up: the number of thousands is read as a plain count after "zvuru".
    return f"zvuru {_join(_below_thousand(count))}"


def _below_thousand(n: int, *, after_larger: bool = False) -> list[str]:
    """The parts of 1..999, largest first, not yet joined with "ne".

    `after_larger`: a thousands part comes before these, so a lone unit is a trailing unit.
    """
    hundreds, rest = divmod(n, 100)
    tens, units = divmod(rest, 10)
    parts: list[str] = []
    if hundreds:
        parts.append("zana" if hundreds == 1 else f"mazana {_CLASS6[hundreds]}")
    if tens:
        parts.append("gumi" if tens == 1 else f"makumi {_CLASS6[tens]}")
    if units:
        # A lone unit is a bare count ("shanu"); after a larger part it is a trailing unit.
        parts.append(_TRAILING_UNIT[units] if parts or after_larger else _DIGITS[units])
    return parts


def _join(parts: list[str]) -> str:
    """Join parts largest first: every part after the first is prefixed with "ne" ("and")."""
    return " ".join(part if i == 0 else f"ne{part}" for i, part in enumerate(parts))


def digits_to_shona(digits: str) -> str:
    """Read a digit string one digit at a time ("0772" -> "ziro nomwe nomwe piri")."""
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(f"not a digit string: {digits!r}")
    return " ".join(_DIGITS[int(d)] for d in digits)


def _read_match(match: re.Match[str]) -> str:
    whole, fraction = match.group(1), match.group(2)
    plain = whole.replace(",", "")
    # A leading zero or more than six digits means a code or phone number, not a quantity.
    if (len(plain) > 1 and plain.startswith("0") and "," not in whole) or int(plain) > MAX_NUMBER:
        words = digits_to_shona(plain)
    else:
        words = number_to_shona(int(plain))
    if fraction is not None:
        words = f"{words} {_DECIMAL_POINT} {digits_to_shona(fraction)}"
    return words


def expand_numbers(text: str) -> str:
    """Replace every number in `text` with Shona words; the rest of the text is unchanged.

    A number glued to a letter ("ku2026", "5kg") gets a space on that side, so that the words
    stay separate words for the tokenizer downstream.
    """
    out: list[str] = []
    last = 0
    for match in _NUMBER.finditer(text):
        start, end = match.span()
        words = _read_match(match)
        if start > 0 and text[start - 1].isalnum():
            words = " " + words
        if end < len(text) and text[end].isalnum():
            words = words + " "
        out.append(text[last:start])
        out.append(words)
        last = end
    out.append(text[last:])
    return "".join(out)


# --- Agreement with the counted noun, and numbers past a million ---------------------------------
#
# After a noun, a Shona numeral takes the noun's class concord: "vanhu vatatu", "mazuva
# matatu", "zvinhu zvitatu", "miti mitatu", "mombe nhatu". Only the units (1-9) agree; tens,
# hundreds and thousands are nouns of their own and keep the counting forms, and a trailing unit
# takes ne- + the agreeing form: "madhora makumi maviri nemashanu". Which class a noun is in is
# guessed from its prefix by the normalizer (sn_normalize.noun_class); this module only knows
# the concords.

# Plural classes whose numerals are prefix + stem; the value is (prefix, the trailing "one").
_CONCORD_PREFIX: dict[int, tuple[str, str]] = {
    2: ("va", "mumwe"), 4: ("mi", "mumwe"), 6: ("ma", "rimwe"), 8: ("zvi", "chimwe"),
    13: ("tu", "kamwe"),
}
_STEMS = ("", "", "viri", "tatu", "na", "shanu", "tanhatu", "nomwe", "sere", "pfumbamwe")
# Class 10 (and the default when the class is unknown): the counting list's own forms.
CLASS10 = 10


def unit_agreeing(units: int, noun_class: int) -> str:
    """1..9 agreeing with a plural class (2, 4, 6, 8, 10, 13); 1 is the form used after "ne"."""
    if noun_class in _CONCORD_PREFIX:
        prefix, one = _CONCORD_PREFIX[noun_class]
        return one if units == 1 else prefix + _STEMS[units]
    return _TRAILING_UNIT[units]


def number_agreeing(n: int, noun_class: int | None) -> str:
    """`n` counted after a plural noun of `noun_class`; None: plain counting (number_to_shona).
    Past MAX_BIG_NUMBER the digits are read one by one (no reading is refused)."""
    if n > MAX_BIG_NUMBER:
        return digits_to_shona(str(n))
    if noun_class is None or n < 2:
        return big_number_to_shona(n)
    base, units = divmod(n, 10)
    if not units:
        return big_number_to_shona(n)
    if n < 10:
        return unit_agreeing(units, noun_class)
    return f"{big_number_to_shona(base * 10)} ne{unit_agreeing(units, noun_class)}"


_MILLION = 1_000_000
_BIG_UNITS = ((1_000_000_000, "bhiriyoni", "mabhiriyoni"), (_MILLION, "miriyoni", "mamiriyoni"))
MAX_BIG_NUMBER = 999_999_999_999


def big_number_to_shona(n: int) -> str:
    """Like number_to_shona, up to 999 999 999 999: miriyoni (10^6) and bhiriyoni (10^9) are
    class-5/6 loan nouns ("miriyoni", "mamiriyoni maviri"), joined with "ne" like the rest."""
    if not 0 <= n <= MAX_BIG_NUMBER:
        raise ValueError(f"big_number_to_shona reads 0..{MAX_BIG_NUMBER}, got {n}")
    if n <= MAX_NUMBER:
        return number_to_shona(n)
    parts: list[str] = []
    for size, singular, plural in _BIG_UNITS:
        count, n = divmod(n, size)
        if count == 1:
            parts.append(singular)
        elif count:
            words = _CLASS6[count] if count < 10 else big_number_to_shona(count)
            parts.append(f"{plural} {words}")
    if n:
        parts.append(_TRAILING_UNIT[n] if n < 10 else number_to_shona(n))
    return _join(parts)
