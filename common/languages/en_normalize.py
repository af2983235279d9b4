"""English readings for the normalizer (common/languages/normalize.py).

espeak-ng reads plain numbers itself, but not "$5.50", "12/03/2025", "14h00", "+263 77 ..."
or "ZiG 100" the way a person says them; this reader writes every class the Shona pack handles
out in English words before espeak-ng sees the text, so both packs go through the same stage.
"""

from __future__ import annotations

from typing import ClassVar

from common.languages.normalize import Context, Normalizer, Number, Reader, ungroup

_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth",
                  "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
CURRENCIES = {  # (singular, plural, sub-unit singular, plural)
    "$": ("dollar", "dollars", "cent", "cents"), "USD": ("US dollar", "US dollars", "cent", "cents"),
    "US$": ("US dollar", "US dollars", "cent", "cents"),
    "ZWL": ("Zimbabwe dollar", "Zimbabwe dollars", "cent", "cents"),
    "Z$": ("Zimbabwe dollar", "Zimbabwe dollars", "cent", "cents"),
    "ZiG": ("zig", "zigs", "cent", "cents"), "ZWG": ("zig", "zigs", "cent", "cents"),
    "R": ("rand", "rand", "cent", "cents"), "ZAR": ("rand", "rand", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"), "GBP": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"), "EUR": ("euro", "euros", "cent", "cents"),
}
MAGNITUDES = {"million": "million", "m": "million", "miriyoni": "million", "billion": "billion",
              "bn": "billion", "bhiriyoni": "billion", "k": "thousand"}
UNITS = {"km": "kilometres", "km/h": "kilometres per hour", "kg": "kilograms", "g": "grams",
         "cm": "centimetres", "mm": "millimetres", "m": "metres", "l": "litres",
         "ml": "millilitres", "°C": "degrees Celsius", "°F": "degrees Fahrenheit", "°": "degrees"}
LEXICON = {
    "ZESA": "Zesa", "ZIMRA": "Zimra", "NSSA": "N S S A", "ZIMSEC": "Zimsec", "SADC": "Sadc",
    "ZiG": "zig", "Dr": "Doctor", "Mr": "Mister", "Mrs": "Missus", "Ms": "Miz",
    "Prof": "Professor", "Hon": "Honourable", "Eng": "Engineer",
    "e.g": "for example", "i.e": "that is", "etc": "et cetera", "vs": "versus",
}
DOMAINS = {"com": "com", "co": "co", "org": "org", "net": "net", "gov": "gov", "zw": "Z W",
           "za": "Z A"}
SYMBOLS = {"&": "and", "+": "plus", "=": "equals", "@": "at", "/": "or", "%": "percent",
           "#": "number", "$": "dollar", "£": "pound", "€": "euro", "°": "degrees",
           "×": "times", "÷": "divided by", "<": "less than", ">": "more than"}


def number_to_english(n: int) -> str:
    """Cardinal words for 0..999 999 999 999 ("one hundred and five", British "and")."""
    if n < 1000:
        return _below_thousand(n)
    for size, name in _SCALES:
        if n >= size:
            head, rest = divmod(n, size)
            words = f"{number_to_english(head)} {name}"
            if rest:
                words += (" and " if rest < 100 else " ") + number_to_english(rest)
            return words
    raise AssertionError("unreachable")


def _below_thousand(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    words = [f"{_ONES[hundreds]} hundred"] if hundreds else []
    if rest or not hundreds:
        tens, units = divmod(rest, 10)
        said = _ONES[rest] if rest < 20 else _TENS[tens] + (f"-{_ONES[units]}" if units else "")
        words.append(f"and {said}" if hundreds else said)
    return " ".join(words)


def ordinal_to_english(n: int) -> str:
    words = number_to_english(n)
    head, _, last = words.rpartition(" ")
    last_head, dash, last_unit = last.rpartition("-")
    unit = last_unit if dash else last
    if unit in _ORDINAL_WORDS:
        unit = _ORDINAL_WORDS[unit]
    elif unit.endswith("y"):
        unit = unit[:-1] + "ieth"
    else:
        unit += "th"
    last = f"{last_head}-{unit}" if dash else unit
    return f"{head} {last}".strip()


def _counted(singular: str, plural: str, n: int) -> str:
    return f"{number_to_english(n)} {singular if n == 1 else plural}"


class EnglishReader(Reader):
    language = "en"
    symbol_word = "symbol"
    domains = DOMAINS
    dotted: ClassVar[dict[str, str]] = {"No": "number"}  # "No. 5"; a bare "No" is the word no

    def number(self, text: str, negative: bool, ctx: Context) -> str:
        whole, _, fraction = ungroup(text).partition(".")
        grouped = whole != text.partition(".")[0]
        if (len(whole) > 1 and whole.startswith("0") and not grouped) or len(whole) > 12 or (
                len(whole) > 6 and not grouped):
            words = self.digits(whole)  # a code or account number
        else:
            words = number_to_english(int(whole))
        if fraction:
            words = f"{words} point {self.digits(fraction)}"
        return f"minus {words}" if negative else words

    def money(self, currency: str, amount: Number, magnitude: str, negative: bool) -> str:
        singular, plural, cent, cents = CURRENCIES[currency]
        if magnitude:
            count = self.number(f"{amount.whole}" + (f".{amount.fraction}" if amount.fraction else ""),
                                False, Context())
            words = f"{count} {MAGNITUDES.get(magnitude.lower(), 'million')} {plural}"
        else:
            fraction = (amount.fraction or "")[:2].ljust(2, "0") if amount.fraction else ""
            parts = []
            if amount.whole or not fraction or not int(fraction):
                parts.append(_counted(singular, plural, amount.whole))
            if fraction and int(fraction):
                parts.append(_counted(cent, cents, int(fraction)))
            words = " and ".join(parts)
        return f"minus {words}" if negative else words

    def percent(self, words: str) -> str:
        return f"{words} percent"

    def ordinal(self, n: int, ctx: Context) -> str:
        return ordinal_to_english(n)

    def time(self, hour: int, minute: int, period: str) -> str:
        if not period and hour > 12:
            hour, period = hour - 12, "pm"
        elif not period and hour == 0:
            hour, period = 12, "am"
        words = number_to_english(hour)
        if minute:
            words += " " + (f"oh {_ONES[minute]}" if minute < 10 else number_to_english(minute))
        elif not period:
            words += " o'clock"
        return f"{words} {'a m' if period == 'am' else 'p m'}" if period else words

    def date(self, day: int | None, month: int, year: int | None) -> str:
        words = [f"the {ordinal_to_english(day)} of {MONTHS[month - 1]}" if day else MONTHS[month - 1]]
        if year is not None:
            words.append(_year(year))
        return " ".join(words)

    def digits(self, digits: str) -> str:
        return " ".join(_ONES[int(d)] for d in digits)

    def measure(self, amount: Number, unit: str) -> str:
        count = self.number(f"{amount.whole}" + (f".{amount.fraction}" if amount.fraction else ""),
                            False, Context())
        said = UNITS[unit]
        if amount.whole == 1 and not amount.fraction and said.split()[0].endswith("s"):
            first, _, rest = said.partition(" ")
            said = f"{first[:-1]} {rest}".strip()
        return f"{count} {said}"

    def word(self, word: str) -> str:
        return LEXICON.get(word, word)

    def letters(self, text: str) -> str:
        return " ".join(_ONES[int(ch)] if ch.isdigit() else ch.upper() for ch in text
                        if ch.isascii() and ch.isalnum())

    def symbol(self, char: str) -> str | None:
        return SYMBOLS.get(char)

    plus = "plus"
    dot = "dot"
    at = "at"
    range_word = "to"


def _year(year: int) -> str:
    """Years the way they are said: 1998 "nineteen ninety-eight", 2025 "twenty twenty-five",
    2000 "two thousand", 2005 "two thousand and five"."""
    century, rest = divmod(year, 100)
    if 1100 <= year <= 9999 and rest and not (2000 <= year < 2010):
        return f"{number_to_english(century)} {'oh ' + _ONES[rest] if rest < 10 else number_to_english(rest)}"
    return number_to_english(year)


NORMALIZER = Normalizer(EnglishReader())


def normalize(text: str) -> str:
    """English text with amounts, dates, times... written out as the words to say."""
    return NORMALIZER.normalize(text)
