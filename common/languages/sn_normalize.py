"""Shona readings for the normalizer (common/languages/normalize.py): what Shona says for money,
percentages, times, dates, phone numbers, ordinals, abbreviations, URLs and symbols.

Readings (one consistent standard, built on sn_numbers' counting words; not yet reviewed by a
native speaker, dialects differ):

* Money: the currency is a class-5/6 noun, singular for one ("dhora rimwe", "sendi rimwe"),
  plural with class-6 agreement otherwise ("madhora mashanu", "masendi makumi mashanu",
  "madhora makumi maviri nemashanu"); cents follow with ne-: "madhora mashanu nemasendi
  makumi mashanu". $ dhora, R randi, £ pondo (pence peni), € yuro, ZiG/ZWG zigi; US$ and ZWL
  add whose dollar it is ("...ekuAmerika", "...eZimbabwe").
* Numbers after a noun agree with the noun's class, guessed from its prefix (va- 2, mi- 4,
  ma- 6, zvi- 8, tu- 13, and a short list of class-9/10 and class-5 nouns); a word whose prefix
  is followed by a tense or verb marker (vano-, vaka-, vane-...) is taken for a verb. This is
  an approximation: a noun without a visible prefix and not on the lists is counted plainly.
* Percent: "<number> muzana" ("makumi mashanu muzana"); negatives "minasi <number>"; ranges
  "<a> kusvika <b>"; decimals "<whole> poindi <digits>".
* Ordinals: possessive concord of the noun before + kutanga/chipiri/.../chipfumbamwe, from ten
  on + the counting words ("wechitatu", "rechipiri", "wegumi nembiri"); "we" (class 1) when
  no noun tells the class.
* Time: "awa" (hour, class 9/10) + the hour counted in class 10 + "nemaminitsi" + minutes,
  then the part of the day: mangwanani (am, or 05-11), masikati (12-17), manheru (18-21),
  usiku (22-04). A 24-hour time is said on the 12-hour clock with its part of the day.
* Dates: "<day> <Month> <year>" with the Shona month names (Ndira ... Zvita) and counting
  words; English weekday names become Shona ones (Muvhuro ... Svondo).
* Phone numbers: digit by digit in their written groups, a pause between groups.
* Letters of spelled acronyms: the names Zimbabwean schools use (ei, bhii, sii, dhii...).
"""

from __future__ import annotations

import re
from typing import ClassVar

from common.languages.normalize import Context, Normalizer, Number, Reader, ungroup
from common.languages.sn_numbers import (
    big_number_to_shona,
    digits_to_shona,
    number_agreeing,
    number_to_shona,
)

MONTH_NAMES = ("Ndira", "Kukadzi", "Kurume", "Kubvumbi", "Chivabvu", "Chikumi", "Chikunguru",
               "Nyamavhuvhu", "Gunyana", "Gumiguru", "Mbudzi", "Zvita")
WEEKDAYS = {
    "monday": "Muvhuro", "tuesday": "Chipiri", "wednesday": "Chitatu", "thursday": "China",
    "friday": "Chishanu", "saturday": "Mugovera", "sunday": "Svondo",
    "mon": "Muvhuro", "tue": "Chipiri", "tues": "Chipiri", "wed": "Chitatu", "thu": "China",
    "thur": "China", "thurs": "China", "fri": "Chishanu", "sat": "Mugovera", "sun": "Svondo",
}
LETTERS = {
    "a": "ei", "b": "bhii", "c": "sii", "d": "dhii", "e": "ii", "f": "efu", "g": "jii",
    "h": "eichi", "i": "ai", "j": "jei", "k": "kei", "l": "eru", "m": "emu", "n": "eni", "o": "ou",
    "p": "pii", "q": "kiyu", "r": "aa", "s": "esi", "t": "tii", "u": "yuu", "v": "vhii",
    "w": "dhabhuriyu", "x": "ekisi", "y": "wai", "z": "zedhi",
}
# Abbreviations and acronyms as Zimbabweans say them (case-sensitive: "ZESA", not "zesa").
LEXICON = {
    "ZESA": "Zesa", "ZIMRA": "Zimura", "NSSA": "eni esi esi ei", "ZBC": "zedhi bhii sii",
    "ZRP": "zedhi aa pii", "ZIMSEC": "Zimuseki", "ZANU": "Zanu", "PF": "pii efu",
    "MDC": "emu dhii sii", "UZ": "yuu zedhi", "NUST": "Nasiti", "CBD": "sii bhii dhii",
    "USA": "yuu esi ei", "UK": "yuu kei", "UN": "yuu eni", "SADC": "Sadheki", "AU": "ei yuu",
    "ID": "ai dhii", "TV": "tii vhii", "ATM": "ei tii emu", "SMS": "esi emu esi",
    "COVID": "Kovhidhi", "HIV": "eichi ai vhii", "AIDS": "Eidzi", "OK": "okei", "ok": "okei",
    "Dr": "Chiremba", "Mr": "Va", "Mrs": "Mai", "Ms": "Mai", "Prof": "Purofesa",
    "Hon": "Honorebhu", "Eng": "Injinya", "e.g": "semuenzaniso",
    "i.e": "kureva kuti", "etc": "nezvimwewo", "vs": "vachirwisana na",
}
# Parts of host names (URLs and e-mail addresses).
DOMAINS = {
    "com": "komu", "co": "ko", "org": "ogi", "net": "neti", "gov": "govhi", "ac": "ei sii",
    "zw": "zedhi dhabhuriyu", "za": "zedhi ei",
}
# Symbols with a Shona reading ("/" between words is "or").
SYMBOLS = {
    "&": "uye", "+": "purasi", "=": "zvakaenzana na", "@": "pa", "/": "kana", "%": "muzana",
    "#": "nhamba", "$": "dhora", "£": "pondo", "€": "yuro", "°": "madhigirii", "×": "kapeta",
    "÷": "kupatsanura", "<": "shoma pana", ">": "zhinji pana",
}
# Currency: (singular, plural, qualifier after the amount, sub-unit singular, plural).
CURRENCIES = {
    "$": ("dhora", "madhora", "", "sendi", "masendi"),
    "USD": ("dhora", "madhora", "ekuAmerika", "sendi", "masendi"),
    "US$": ("dhora", "madhora", "ekuAmerika", "sendi", "masendi"),
    "ZWL": ("dhora", "madhora", "eZimbabwe", "sendi", "masendi"),
    "Z$": ("dhora", "madhora", "eZimbabwe", "sendi", "masendi"),
    "ZiG": ("zigi", "mazigi", "", "sendi", "masendi"),
    "ZWG": ("zigi", "mazigi", "", "sendi", "masendi"),
    "R": ("randi", "marandi", "", "sendi", "masendi"),
    "ZAR": ("randi", "marandi", "", "sendi", "masendi"),
    "£": ("pondo", "mapondo", "", "peni", "mapeni"),
    "GBP": ("pondo", "mapondo", "", "peni", "mapeni"),
    "€": ("yuro", "mayuro", "", "sendi", "masendi"),
    "EUR": ("yuro", "mayuro", "", "sendi", "masendi"),
}
MAGNITUDES = {"million": "miriyoni", "miriyoni": "miriyoni", "m": "miriyoni",
              "billion": "bhiriyoni", "bhiriyoni": "bhiriyoni", "bn": "bhiriyoni", "k": "churu"}
# Measures: (singular, plural) class 5/6 loans.
UNITS = {
    "km": ("kiromita", "makiromita"), "km/h": ("kiromita paawa", "makiromita paawa"),
    "kg": ("kirogiramu", "makirogiramu"), "g": ("giramu", "magiramu"),
    "cm": ("sendimita", "masendimita"), "mm": ("mirimita", "mamirimita"),
    "m": ("mita", "mamita"), "l": ("rita", "marita"), "ml": ("miririta", "mamiririta"),
    "°C": ("dhigirii", "madhigirii"), "°F": ("dhigirii", "madhigirii"),
    "°": ("dhigirii", "madhigirii"),
}
# Prefixes joined to a capitalised (English, acronym) word: "neZESA", "paWhatsApp", "kuma-".
_OUTER = "ne|na|se|sa|ku|pa|mu|kwa|ye|re|we|ze|dze|che|rwe|hwe|kwe|twe|ve|va|e|o|i"
_INNER = "ma|chi|zvi|mu|ka|tu|ru|hu|va|i|ri|dzi|mi"
_PREFIXES = re.compile(rf"(?:{_OUTER})(?:{_INNER})?|(?:{_INNER})")
# A lower-case (or capitalised, at a sentence start) prefix, then a capital: "NemaGreen".
_JOINED = re.compile(r"^([A-Za-z][a-z]*)([A-Z][A-Za-z]*)$")


def split_prefix(word: str) -> tuple[str, str] | None:
    """("ne", "ZESA") for "neZESA": a Shona prefix joined to a capitalised word; else None."""
    joined = _JOINED.match(word)
    if joined and _PREFIXES.fullmatch(joined.group(1).lower()):
        return joined.group(1), joined.group(2)
    return None

# Noun class from a plural prefix, unless a verb marker follows it (vanoda, vakati, vane).
_CLASS_PREFIXES = (("zvi", 8), ("va", 2), ("ma", 6), ("mi", 4), ("tu", 13))
_VERB_MARK = re.compile(r"(no|ka|cha|ri|ne|nga|sa|i|a|e|o|u)")
CLASS10_NOUNS = frozenset({
    "mombe", "huku", "mbudzi", "imba", "dzimba", "nguva", "mhuri", "nzira", "shiri", "hove",
    "mbeu", "nyika", "ngoro", "tsoka", "awa", "nhamba", "mhuka", "nzou", "shumba", "mota",
    "dzimota", "pfuti", "ndege", "nhau", "mvura", "nzvimbo", "mari",
})
CLASS5_NOUNS = frozenset({"zuva", "gore", "vhiki", "dhora", "sendi", "bhazi", "zita", "bhuku"})
# Possessive concord by class, for ordinals ("zuva rechitatu", "mwana wechipiri").
_POSSESSIVE = {1: "we", 2: "va", 3: "we", 4: "ye", 5: "re", 6: "e", 7: "che", 8: "zve",
               9: "ye", 10: "dze", 11: "rwe", 12: "ke", 13: "twe", 14: "hwe", 15: "kwe"}
_SINGULAR_PREFIXES = (("chi", 7), ("mu", 1), ("ru", 11), ("ka", 12), ("hu", 14), ("ku", 15))
_ORDINALS = ("", "kutanga", "chipiri", "chitatu", "china", "chishanu", "chitanhatu", "chinomwe",
             "chisere", "chipfumbamwe")


def plural_class(word: str) -> int | None:
    """The plural class of a noun before a number, guessed from its prefix; None: not a noun
    this can tell (a verb, a class-5 noun, an unknown word)."""
    if word in CLASS10_NOUNS:
        return 10
    for prefix, noun_class in _CLASS_PREFIXES:
        if word.startswith(prefix) and len(word) > len(prefix) + 1:
            return None if _VERB_MARK.match(word, len(prefix)) else noun_class
    return None


def noun_class(word: str) -> int | None:
    """Any class (singular or plural) for the ordinal's concord; None when unknown."""
    if word in CLASS5_NOUNS:
        return 5
    if word in CLASS10_NOUNS:
        return 9
    plural = plural_class(word)
    if plural is not None:
        return plural
    return next((c for p, c in _SINGULAR_PREFIXES if word.startswith(p) and len(word) > len(p) + 1), None)


def _counted(singular: str, plural: str, n: int) -> str:
    """A class-5/6 noun and its count: "dhora rimwe", "madhora mashanu"."""
    return f"{singular} rimwe" if n == 1 else f"{plural} {number_agreeing(n, 6)}"


class ShonaReader(Reader):
    language = "sn"
    symbol_word = "chiratidzo"
    domains = DOMAINS
    dotted: ClassVar[dict[str, str]] = {"No": "nhamba"}  # "No. 5"; a bare "No" is the word no
    plus = "purasi"
    dot = "dhoti"
    at = "pa"
    range_word = "kusvika"

    def number(self, text: str, negative: bool, ctx: Context) -> str:
        whole, _, fraction = ungroup(text).partition(".")
        grouped = whole != text.partition(".")[0]
        if (len(whole) > 1 and whole.startswith("0") and not grouped) or len(whole) > 12 or (
                len(whole) > 6 and not grouped):
            # A leading zero, or a long ungrouped string: a code or account number, digit by digit.
            words = digits_to_shona(whole)
        elif fraction:
            words = big_number_to_shona(int(whole))
        else:
            words = number_agreeing(int(whole), plural_class(ctx.previous))
        if fraction:
            words = f"{words} poindi {digits_to_shona(fraction)}"
        return f"minasi {words}" if negative else words

    def money(self, currency: str, amount: Number, magnitude: str, negative: bool) -> str:
        singular, plural, qualifier, cent, cents = CURRENCIES[currency]
        if magnitude:
            words = f"{plural} {_magnitude(amount, MAGNITUDES.get(magnitude.lower(), 'miriyoni'))}"
        else:
            words = self._amount(amount, singular, plural, cent, cents)
        if qualifier:
            words = f"{words} {qualifier}"
        return f"minasi {words}" if negative else words

    def _amount(self, amount: Number, singular: str, plural: str, cent: str, cents: str) -> str:
        fraction = (amount.fraction or "")[:2].ljust(2, "0") if amount.fraction else ""
        cent_count = int(fraction) if fraction else 0
        parts = []
        if amount.whole or not cent_count:
            parts.append(_counted(singular, plural, amount.whole) if amount.whole
                         else f"{plural} ziro")
        if cent_count:
            said = _counted(cent, cents, cent_count)
            parts.append(f"ne{said}" if parts else said)
        return " ".join(parts)

    def percent(self, words: str) -> str:
        return f"{words} muzana"

    def ordinal(self, n: int, ctx: Context) -> str:
        concord = _POSSESSIVE.get(noun_class(ctx.previous) or 1, "we")
        stem = _ORDINALS[n] if 0 < n < 10 else number_agreeing(n, None)
        return f"{concord}{stem}"

    def time(self, hour: int, minute: int, period: str) -> str:
        if period == "pm" and hour < 12:
            hour += 12
        elif period == "am" and hour == 12:
            hour = 0
        clock = hour % 12 or 12
        words = f"awa {number_agreeing(clock, 10) if clock > 1 else 'imwe'}"
        if minute:
            words += " " + ("neminitsi rimwe" if minute == 1
                            else f"nemaminitsi {number_agreeing(minute, 6)}")
        part = _part_of_day(hour) if period or hour > 12 or hour == 0 else ""
        return f"{words} {part}".strip()

    def date(self, day: int | None, month: int, year: int | None) -> str:
        words = [number_to_shona(day)] if day else []
        words.append(MONTH_NAMES[month - 1])
        if year is not None:
            words.append(big_number_to_shona(year))
        return " ".join(words)

    def digits(self, digits: str) -> str:
        return digits_to_shona(digits)

    def measure(self, amount: Number, unit: str) -> str:
        singular, plural = UNITS[unit]
        if amount.fraction:
            return f"{plural} {self.number(f'{amount.whole}.{amount.fraction}', False, Context())}"
        return _counted(singular, plural, amount.whole)

    def word(self, word: str) -> str:
        said = LEXICON.get(word)
        if said is None and word[:1].isupper():
            said = WEEKDAYS.get(word.lower()) or _english_month(word)
        if said:
            return said
        prefixed = split_prefix(word)
        if prefixed and prefixed[1] in LEXICON:
            return prefixed[0] + LEXICON[prefixed[1]]
        if prefixed and prefixed[1].isupper() and len(prefixed[1]) > 1:
            return prefixed[0] + self._acronym(prefixed[1])
        if word.isupper() and 1 < len(word) <= 4:
            return self._acronym(word)
        return word

    def _acronym(self, word: str) -> str:
        """An acronym not in the lexicon: said as a word when Shona can read it, else spelled."""
        from common.languages.sn_g2p import is_probably_english

        return word.capitalize() if not is_probably_english(word) and len(word) > 3 else self.letters(word)

    def letters(self, text: str) -> str:
        return " ".join(LETTERS.get(ch.lower()) or digits_to_shona(ch) for ch in text
                        if ch.isascii() and ch.isalnum())

    def symbol(self, char: str) -> str | None:
        return SYMBOLS.get(char)


MONTH_NAMES_EN = ("january", "february", "march", "april", "may", "june", "july", "august",
                  "september", "october", "november", "december")


def _english_month(word: str) -> str | None:
    """An English month name written in Shona text, as the Shona month."""
    lower = word.lower()
    return MONTH_NAMES[MONTH_NAMES_EN.index(lower)] if lower in MONTH_NAMES_EN else None


def _magnitude(amount: Number, big: str) -> str:
    """5 (million) -> "mamiriyoni mashanu"; 1 -> "miriyoni rimwe"; 2.5 -> "... maviri poindi
    shanu"; thousands ("5k") are zvuru with class-8 agreement."""
    if big == "churu":
        return "churu" if amount.whole == 1 and not amount.fraction else (
            f"zvuru {number_agreeing(amount.whole, 8)}")
    if amount.whole == 1 and not amount.fraction:
        return f"{big} rimwe"
    words = f"ma{big} {number_agreeing(amount.whole, 6)}"
    return f"{words} poindi {digits_to_shona(amount.fraction)}" if amount.fraction else words


def _part_of_day(hour: int) -> str:
    if 5 <= hour < 12:
        return "mangwanani"
    if 12 <= hour < 18:
        return "masikati"
    if 18 <= hour < 22:
        return "manheru"
    return "usiku"


NORMALIZER = Normalizer(ShonaReader())


def normalize(text: str) -> str:
    """Shona text with numbers, amounts, dates... written out as the words to say."""
    return NORMALIZER.normalize(text)
