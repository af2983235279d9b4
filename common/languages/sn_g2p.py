"""Shona grapheme-to-phoneme conversion for a Piper (espeak-ng IPA) voice.

Shona spelling (the 1967 standard orthography, Zezuru-based) is close to phonemic, so rules do
the whole job: the word is cut into graphemes, longest match first, and each grapheme is one
phoneme. A phoneme is one list item and may be several code points ("tʃ", "mb", "s͎").

Grapheme table (IPA as in descriptions of standard Zezuru Shona):

    vowels       a e i o u -> a e i o u (every vowel is its own syllable: "sei" = se.i)
    plain        b ɓ   d ɗ   f f   g ɡ   h ɦ   j dʒ   k k   m m   n n   p p   r ɾ   s s   t t
                 v ʋ   w w   y j   z z          (b, d are implosive; h is voiced; v is [ʋ])
    breathy      bh b̤  dh d̤  vh v̤  mh m̤  nh n̤
    affricates   ch tʃ  ts ts  dz dz  pf pf  bv bv
    fricatives   sh ʃ  zh ʒ
    whistled     sv s͎  zv z͎  tsv ts͎  dzv dz͎     (U+034E, the extIPA "whistled" mark)
    palatal      ny ɲ   ty tʃk   dy dʒɡ          (ty/dy as Zezuru says them: "kudya" [kudʒɡa])
    velar nasal  n' ŋ   ng' ŋ                    ("n'anga", and the ng' spelling of it)
    prenasalised mb mb  mbv mbv  mv ɱv  nd nd  ndz ndz  ndzv ndz͎  ng ŋɡ  nj ndʒ
                 nz nz  nzv nz͎                  (one phoneme: nasal + plain voiced stop; the
                                                  b/d after a nasal are not implosive)
    labialised   C + w before a vowel -> Cʷ      (kw kʷ, gw ɡʷ, rw ɾʷ, ngw ŋɡʷ, mw mʷ, nyw ɲʷ...)
    syllabic     m, n, n' before a consonant or at the word's end -> m̩ n̩ ŋ̩ (U+0329)

Stress (optional, `stress=True`): Shona is tonal and tone is not written, but its phrase
prominence falls on the penultimate syllable, and Piper voices are trained on text with stress
marks. So "ˈ" goes on the second-to-last syllable (a vowel, or a syllabic nasal, is a syllable),
written where espeak-ng writes it, and so where the voice learned it: right before the
syllable's vowel, after its onset consonants ("Harare" -> ɦaɾˈaɾe, as espeak's "hɚɹˈɑːɹi").

`to_voice_symbols` then turns these phonemes into the single-code-point symbols a voice has,
substituting the nearest available symbol where the voice lacks one, and reporting every
substitution and every symbol it could not place.

Limits: tone is not modelled; velarised pronunciations heard in Zezuru (rw [ɾɡʷ], sw [skʷ],
mbw [mbɡ]) are written as plain labialisation; loan spellings outside the orthography (l, q, x,
a lone c) have no rules; dialect spellings (Ndau, Manyika, Karanga) are read with these rules.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Literal, NamedTuple

from common.languages.sn_normalize import normalize as normalize_text
from common.languages.sn_normalize import split_prefix

BREATHY = "\u0324"  # combining diaeresis below
WHISTLED = "\u034e"  # combining upwards arrow below (extIPA whistled articulation)
SYLLABIC = "\u0329"  # combining vertical line below
LABIALISED = "ʷ"
STRESS = "ˈ"

VOWELS: Mapping[str, str] = {"a": "a", "e": "e", "i": "i", "o": "o", "u": "u"}

CONSONANTS: Mapping[str, str] = {
    # Single letters.
    "b": "ɓ", "d": "ɗ", "f": "f", "g": "ɡ", "h": "ɦ", "j": "dʒ", "k": "k", "m": "m", "n": "n",
    "p": "p", "r": "ɾ", "s": "s", "t": "t", "v": "ʋ", "w": "w", "y": "j", "z": "z",
    # Breathy-voiced ("murmured") consonants.
    "bh": "b" + BREATHY, "dh": "d" + BREATHY, "vh": "v" + BREATHY, "mh": "m" + BREATHY,
    "nh": "n" + BREATHY,
    # Affricates and fricatives.
    "ch": "tʃ", "sh": "ʃ", "zh": "ʒ", "ts": "ts", "dz": "dz", "pf": "pf", "bv": "bv",
    # Whistled sibilants.
    "sv": "s" + WHISTLED, "zv": "z" + WHISTLED, "tsv": "ts" + WHISTLED, "dzv": "dz" + WHISTLED,
    # Palatals and the velar nasal.
    "ny": "ɲ", "ty": "tʃk", "dy": "dʒɡ", "n'": "ŋ", "ng'": "ŋ",
    # Prenasalised consonants: one phoneme each, nasal homorganic with the stop.
    "mb": "mb", "mbv": "mbv", "mv": "ɱv", "nd": "nd", "ndz": "ndz", "ndzv": "ndz" + WHISTLED,
    "ng": "ŋɡ", "nj": "ndʒ", "nz": "nz", "nzv": "nz" + WHISTLED,
}

GRAPHEMES: Mapping[str, str] = {**VOWELS, **CONSONANTS}
_LONGEST = max(len(grapheme) for grapheme in GRAPHEMES)
# Graphemes that become syllabic when no vowel follows them.
_NASALS = frozenset({"m", "n", "n'", "ng'"})
_VOWEL_PHONEMES = frozenset(VOWELS.values())
# Typographic apostrophes people type in ng'ombe / n'anga.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})

Lang = Literal["sn", "en", "punct"]


class Segment(NamedTuple):
    """A word or punctuation mark of the input; `phonemes` is empty for "en" (espeak reads it).

    `joined`: this segment continues the previous one's word (the English half of a
    code-switched word such as "paWhatsApp": "pa" in Shona, then "WhatsApp" in English).
    """

    lang: Lang
    text: str
    phonemes: list[str]
    joined: bool = False


class G2PResult(NamedTuple):
    """How a word was read: graphemes[i] became phonemes[i]; `unknown` has what no rule covers."""

    graphemes: list[str]
    phonemes: list[str]
    unknown: list[str]


class UnknownGraphemeError(ValueError):
    """The word has characters that no Shona spelling rule covers."""

    def __init__(self, word: str, unknown: list[str]) -> None:
        super().__init__(f"no Shona spelling rule for {unknown!r} in {word!r}")
        self.word = word
        self.unknown = unknown


def normalise_word(word: str) -> str:
    """NFC, lower case, and one apostrophe character, so the grapheme table can match."""
    return unicodedata.normalize("NFC", word).translate(_APOSTROPHES).lower()


def shona_g2p(word: str) -> G2PResult:
    """Cut a word into graphemes (longest match first) and read each as one phoneme.

    A character that starts no grapheme goes to `unknown` and is skipped, so what was read is
    always exactly the input minus `unknown`: `"".join(graphemes)` plus the unknowns is the
    normalised word.
    """
    text = normalise_word(word)
    graphemes: list[str] = []
    unknown: list[str] = []
    i = 0
    while i < len(text):
        for size in range(min(_LONGEST, len(text) - i), 0, -1):
            if text[i : i + size] in GRAPHEMES:
                graphemes.append(text[i : i + size])
                i += size
                break
        else:
            unknown.append(text[i])
            i += 1
    graphemes = _merge_labialisation(graphemes)
    return G2PResult(graphemes, _read_graphemes(graphemes), unknown)


def _merge_labialisation(graphemes: list[str]) -> list[str]:
    """Join a consonant and the "w" after it into one grapheme ("k" "w" -> "kw") before a vowel."""
    merged: list[str] = []
    for i, grapheme in enumerate(graphemes):
        following = graphemes[i + 1] if i + 1 < len(graphemes) else ""
        if (grapheme == "w" and merged and merged[-1] in CONSONANTS and not merged[-1].endswith("w")
                and following in VOWELS):
            merged[-1] += "w"
        else:
            merged.append(grapheme)
    return merged


def _read_graphemes(graphemes: list[str]) -> list[str]:
    """The phoneme of each grapheme, with labialisation and syllabic nasals marked."""
    phonemes: list[str] = []
    for i, grapheme in enumerate(graphemes):
        following = graphemes[i + 1] if i + 1 < len(graphemes) else ""
        if grapheme not in GRAPHEMES and grapheme.endswith("w"):
            phonemes.append(GRAPHEMES[grapheme[:-1]] + LABIALISED)
        elif grapheme in _NASALS and following not in VOWELS:
            # No vowel follows (a consonant, or the word ends), so the nasal is its own syllable.
            phonemes.append(GRAPHEMES[grapheme] + SYLLABIC)
        else:
            phonemes.append(GRAPHEMES[grapheme])
    return phonemes


def shona_ipa(word: str, *, stress: bool = False) -> list[str]:
    """A Shona word as IPA phonemes, one list item per phoneme (see the module's table).

    Raises UnknownGraphemeError, naming the characters, if any character has no rule: nothing is
    silently dropped. With `stress`, "ˈ" is an item of its own before the penultimate vowel.
    """
    result = shona_g2p(word)
    if result.unknown:
        raise UnknownGraphemeError(word, result.unknown)
    return add_stress(result.phonemes) if stress else result.phonemes


def is_nucleus(phoneme: str) -> bool:
    """A vowel or a syllabic nasal: the phonemes that make a syllable."""
    return phoneme in _VOWEL_PHONEMES or phoneme.endswith(SYLLABIC)


def add_stress(phonemes: list[str]) -> list[str]:
    """Put "ˈ" right before the penultimate syllable's nucleus (words of two syllables or more).

    That is espeak-ng's placement (after the onset, before the vowel), which Piper voices were
    trained on. A one-syllable word is left unstressed, as Shona clitics and particles are.
    """
    nuclei = [i for i, phoneme in enumerate(phonemes) if is_nucleus(phoneme)]
    if len(nuclei) < 2:
        return list(phonemes)
    return [*phonemes[: nuclei[-2]], STRESS, *phonemes[nuclei[-2] :]]


# --- English words inside Shona text -------------------------------------------------------------

# Frequent English words that happen to be spelled like possible Shona words (open syllables,
# Shona letters only), so the spelling rules below cannot catch them. Kept short on purpose:
# only words believed not to be Shona words; "here" (a Shona question particle), "we", "save"
# (a Zimbabwean river) and the like are left out.
ENGLISH_LOOKALIKES = frozenset({
    "to", "go", "do", "so", "me", "be", "she", "one", "some", "come", "time", "home", "name",
    "game", "same", "make", "take", "fine", "mine", "nine", "five", "done", "more", "note", "site",
    "data", "menu", "video", "radio", "sure", "zone", "hope", "move", "mode", "code", "type",
})
# Spellings standard Shona never uses: l, q, x, a c outside "ch", a doubled consonant letter.
# Double vowels are Shona (a long vowel: "roora", "nhoroondo", "teerera"; or two vowels across
# a prefix: "kuuya"), so "ee"/"oo" alone say nothing. What does: English words with them that
# pass the syllable rules end in the double vowel ("see", "zoo", "bamboo", "refugee"), or in
# ee/oo + s/z + e ("cheese", "choose", "goose"); Shona words do neither, except the
# interjections and ideophones listed here.
_NOT_SHONA_SPELLING = re.compile(r"[lqx]|c(?!h)|([bcdfghjkmnprstvwyz])\1|(ee|oo)([sz]e)?$")
SHONA_DOUBLE_VOWEL_ENDINGS = frozenset({"hee", "ehee", "nhee", "pfee", "hoo", "zvee", "mhoo"})


def is_probably_english(word: str) -> bool:
    """Guess whether a word in Shona text is English (or another non-Shona word).

    True when the word (a) is on ENGLISH_LOOKALIKES, or is "I"; (b) has a spelling Shona does not
    use (l, q, x, c outside ch, ll/ss/tt..., a final ee/oo or ee/oo + s/z + e; double vowels
    elsewhere are Shona long vowels); (c) has a character with no Shona rule
    (accented letters, inner apostrophes as in "it's"); or (d) breaks Shona syllable structure:
    every Shona syllable ends in a vowel, so a consonant grapheme must be followed by a vowel,
    except a syllabic nasal before a consonant. (d) catches consonant-final words ("network",
    "bus"), and clusters no Shona grapheme covers ("th", "ph", "st", "tr", "pl", "wh").

    Limits: English words spelled like Shona ("data", "video" are listed; "banana", "panga",
    "area" are not) come out False, and Shona-looking English names are read as Shona. Shona
    words with a non-standard spelling (dialect l, a name like "Tinotenda-Lee") come out True.
    A True answer only means "do not read this with Shona rules".
    """
    if word == "I":
        return True
    text = normalise_word(word)
    if not text.replace("'", ""):
        return False
    if text in SHONA_DOUBLE_VOWEL_ENDINGS:
        return False
    if text in ENGLISH_LOOKALIKES or _NOT_SHONA_SPELLING.search(text):
        return True
    result = shona_g2p(text)
    return bool(result.unknown) or not _has_shona_syllables(result.phonemes)


def _has_shona_syllables(phonemes: list[str]) -> bool:
    """Every syllable open: each consonant is followed by a vowel, unless it is a syllabic nasal."""
    if not phonemes or phonemes[-1] not in _VOWEL_PHONEMES:
        return False
    return all(
        is_nucleus(phoneme) or phonemes[i + 1] in _VOWEL_PHONEMES
        for i, phoneme in enumerate(phonemes[:-1])
    )


# --- Text to segments ----------------------------------------------------------------------------

CLAUSE_MARKS = ",.!?;:"
# A word is letters with inner apostrophes (ng'ombe, n'anga); a run of clause marks ("?!",
# "...") is one segment; any other non-space character is a segment of its own.
_TOKEN = re.compile(r"(?P<word>[^\W\d_]+(?:'[^\W\d_]*)*)|(?P<marks>[.!?]+|[,;:])|(?P<other>\S)")


def segment(text: str, *, stress: bool = True) -> list[Segment]:
    """Split text into Shona words (with phonemes), English words and punctuation.

    The text is first normalized (`sn_normalize`: numbers, money, times, dates, phone numbers,
    abbreviations, URLs and symbols become Shona words). Shona words get their phonemes
    from `shona_ipa`, with penultimate stress unless `stress=False`. English-looking words
    (`is_probably_english`) come back as "en" with no phonemes: the caller reads them with
    espeak-ng's English voice. A Shona prefix joined to an English word ("paWhatsApp",
    "nemaGreen", "kuSchool") is two segments, the Shona prefix and the English word marked
    `joined`, so that they are said as one word. A clause mark (, . ! ? ; :) is a "punct"
    segment whose phonemes are that mark (a run such as "?!" or "..." gives its first mark);
    silent punctuation (quotes, brackets, dashes) is a "punct" segment with no phonemes:
    kept, but not spoken. Segments carry no spaces: every word segment is a word of its own.
    """
    text = unicodedata.normalize("NFC", text).translate(_APOSTROPHES).replace("\u2026", "...")
    segments: list[Segment] = []
    for match in _TOKEN.finditer(normalize_text(text)):
        token = match.group()
        if match.lastgroup == "marks":
            segments.append(Segment("punct", token, [token[0]]))
        elif match.lastgroup == "other":
            segments.append(Segment("punct", token, []))
        elif is_probably_english(token):
            segments.extend(_english_word(token))
        else:
            segments.append(Segment("sn", token, shona_ipa(token, stress=stress)))
    return segments


def _english_word(token: str) -> list[Segment]:
    """An English word, or a Shona prefix (unstressed) joined to one: "pa" + "WhatsApp"."""
    prefixed = split_prefix(token)
    if prefixed is not None and is_probably_english(prefixed[1]):
        prefix, word = prefixed
        return [Segment("sn", prefix, shona_ipa(prefix)), Segment("en", word, [], joined=True)]
    return [Segment("en", token, [])]


# --- Phonemes to the symbols a voice has ---------------------------------------------------------

# Symbols espeak-ng's en-us voice emits (measured on espeak-ng 1.51 with a few thousand English
# words). An en_US Piper voice has ids for ~150 symbols but only learned these: give
# `set(phoneme_id_map) & EN_US_ESPEAK_SYMBOLS` as `available` so that Shona sounds such as ɓ ɗ ɲ
# ʋ ɦ are replaced by English ones instead of reaching embeddings the voice never trained.
EN_US_ESPEAK_SYMBOLS = frozenset(
    "abdefhijklmnopstuvwxzæðŋɐɑɔəɚɛɜɡɪɹɾʃʊʌʒʔθᵻ" + "ˈˌː" + SYLLABIC + " " + CLAUSE_MARKS
)

# A whole phoneme replaced as a unit, candidates best first: a breathy nasal keeps an audible
# breath after it, which tells "mhuka" from "muka".
WHOLE_SUBSTITUTES: Mapping[str, tuple[tuple[str, ...], ...]] = {
    "m" + BREATHY: (("m", "ɦ"), ("m", "h")),
    "n" + BREATHY: (("n", "ɦ"), ("n", "h")),
}
# One code point replaced, candidates best first; () means "leave it out" (a mark whose loss
# only makes the sound plainer: breathy b̤ -> b, syllabic m̩ -> m, no stress mark).
SYMBOL_SUBSTITUTES: Mapping[str, tuple[tuple[str, ...], ...]] = {
    "ɓ": (("b",),), "ɗ": (("d",),), "ʄ": (("ɟ",), ("d", "j")), "ɠ": (("ɡ",), ("g",)),
    "ɡ": (("g",),), "g": (("ɡ",),), "ʋ": (("v",), ("w",)), "ɦ": (("h",),),
    "ɾ": (("r",), ("ɹ",), ("d",)), "ɲ": (("n", "j"),), "ŋ": (("n", "ɡ"), ("n", "g"), ("n",)),
    "ɱ": (("m",),), "ʒ": (("z",),), "ʃ": (("s",),), "j": (("y",),),
    LABIALISED: (("w",),), "ʲ": (("j",),), "ʰ": (("h",),),
    # Whistled sibilants are said with rounded lips; an English voice gets closest with s + w.
    WHISTLED: ((LABIALISED,), ("w",)),
    BREATHY: ((),), SYLLABIC: ((),), STRESS: ((),), "ˌ": ((),), "ː": ((),),
}


def _first_available(
    candidates: Iterable[tuple[str, ...]], available: set[str] | frozenset[str]
) -> tuple[str, ...] | None:
    return next((c for c in candidates if all(symbol in available for symbol in c)), None)


def _map_phoneme(phoneme: str, available: set[str] | frozenset[str]) -> tuple[list[str], str]:
    """The symbols for one phoneme the voice lacks, and how it was rendered ("?" = unmapped)."""
    whole = _first_available(WHOLE_SUBSTITUTES.get(phoneme, ()), available)
    if whole is not None:
        return list(whole), "".join(whole)
    symbols: list[str] = []
    shown = ""
    for code_point in phoneme:
        if code_point in available:
            out: tuple[str, ...] | None = (code_point,)
        else:
            out = _first_available(SYMBOL_SUBSTITUTES.get(code_point, ()), available)
        symbols.extend(out or ())
        shown += "?" if out is None else "".join(out)
    return symbols, shown


def to_voice_symbols(
    phonemes: list[str], available: set[str] | frozenset[str]
) -> tuple[list[str], list[str]]:
    """Map phonemes to single-code-point symbols in `available` (a voice's phoneme_id_map keys).

    Each phoneme is split into its code points. A code point the voice has is kept; one it lacks
    is replaced by the first fully available candidate of SYMBOL_SUBSTITUTES (a breathy nasal by
    WHOLE_SUBSTITUTES first). Returns (symbols, report): the report lists each changed phoneme
    once, in order of first use, as "ɓ→b", "m̤→mh", "ˈ→∅" (left out); a code point with no
    available substitute is written "?" ("ǂ→?") and is missing from the symbols, so the report is
    the place to check that nothing was lost.
    """
    symbols: list[str] = []
    report: list[str] = []
    for phoneme in phonemes:
        if all(symbol in available for symbol in phoneme):
            symbols.extend(phoneme)
            continue
        mapped, shown = _map_phoneme(phoneme, available)
        symbols.extend(mapped)
        entry = f"{phoneme}→{shown or '∅'}"
        if entry not in report:
            report.append(entry)
    return symbols, report
