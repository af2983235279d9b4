"""Shona G2P: the grapheme table, every letter accounted for, numbers, English words, voice symbols."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from common.languages.sn_g2p import (
    EN_US_ESPEAK_SYMBOLS,
    STRESS,
    UnknownGraphemeError,
    add_stress,
    is_probably_english,
    normalise_word,
    segment,
    shona_g2p,
    shona_ipa,
    to_voice_symbols,
)
from common.languages.sn_numbers import digits_to_shona, expand_numbers, number_to_shona
from common.settings import Settings

VOICE_CONFIG = Path("piper-en-us-joe-medium") / "en_US-joe-medium.onnx.json"

# Word, expected phonemes (space-separated, one item per phoneme, no stress).
WORDS = [
    # Prenasalised consonants.
    ("mbudzi", "mb u dz i"),
    ("shumba", "ʃ u mb a"),
    ("ndimi", "nd i m i"),
    ("ndinoda", "nd i n o ɗ a"),
    ("ngoma", "ŋɡ o m a"),
    ("hongu", "ɦ o ŋɡ u"),
    ("ekunze", "e k u nz e"),
    ("nzou", "nz o u"),
    ("njere", "ndʒ e ɾ e"),
    ("mvura", "ɱv u ɾ a"),
    ("nzvimbo", "nz͎ i mb o"),
    ("nzvenga", "nz͎ e ŋɡ a"),
    ("famba", "f a mb a"),
    # Velar nasal: ng' and n'.
    ("ng'ombe", "ŋ o mb e"),
    ("ng’ombe", "ŋ o mb e"),  # typographic apostrophe
    ("n'anga", "ŋ a ŋɡ a"),
    # Palatals.
    ("nyama", "ɲ a m a"),
    ("nyora", "ɲ o ɾ a"),
    ("dzvinyu", "dz͎ i ɲ u"),
    ("tyora", "tʃk o ɾ a"),
    ("dyara", "dʒɡ a ɾ a"),
    ("kudya", "k u dʒɡ a"),
    # Affricates and fricatives.
    ("chingwa", "tʃ i ŋɡʷ a"),
    ("chuma", "tʃ u m a"),
    ("zhizha", "ʒ i ʒ a"),
    ("tsoka", "ts o k a"),
    ("dzidza", "dz i dz a"),
    ("pfuma", "pf u m a"),
    ("upfumi", "u pf u m i"),
    ("bveni", "bv e n i"),
    ("kubva", "k u bv a"),
    ("juzi", "dʒ u z i"),
    # Whistled sibilants.
    ("svika", "s͎ i k a"),
    ("kusvika", "k u s͎ i k a"),
    ("Masvingo", "m a s͎ i ŋɡ o"),
    ("zvino", "z͎ i n o"),
    ("zvakanaka", "z͎ a k a n a k a"),
    ("tsvuku", "ts͎ u k u"),
    ("tsvaira", "ts͎ a i ɾ a"),
    ("kudzvanya", "k u dz͎ a ɲ a"),
    # Breathy consonants.
    ("bhazi", "b̤ a z i"),
    ("dhongi", "d̤ o ŋɡ i"),
    ("vhiki", "v̤ i k i"),
    ("mbavha", "mb a v̤ a"),
    ("mhuka", "m̤ u k a"),
    ("mhoro", "m̤ o ɾ o"),
    ("mhomho", "m̤ o m̤ o"),
    ("nhamo", "n̤ a m o"),
    ("nhasi", "n̤ a s i"),
    ("nhanha", "n̤ a n̤ a"),
    # Labialised consonants.
    ("kwana", "kʷ a n a"),
    ("mugwagwa", "m u ɡʷ a ɡʷ a"),
    ("hwahwa", "ɦʷ a ɦʷ a"),
    ("rwizi", "ɾʷ i z i"),
    ("kubatsirwa", "k u ɓ a ts i ɾʷ a"),
    ("mangwanani", "m a ŋɡʷ a n a n i"),
    ("jongwe", "dʒ o ŋɡʷ e"),
    ("Zimbabwe", "z i mb a ɓʷ e"),
    ("imbwa", "i mbʷ a"),
    ("kunwa", "k u nʷ a"),
    ("mwana", "mʷ a n a"),
    ("pwanya", "pʷ a ɲ a"),
    # Plain letters: implosive b d, voiced h, ʋ, flap r, j for y.
    ("baba", "ɓ a ɓ a"),
    ("dada", "ɗ a ɗ a"),
    ("gara", "ɡ a ɾ a"),
    ("Harare", "ɦ a ɾ a ɾ e"),
    ("makadii", "m a k a ɗ i i"),
    ("mamiriro", "m a m i ɾ i ɾ o"),
    ("pasi", "p a s i"),
    ("sekuru", "s e k u ɾ u"),
    ("tete", "t e t e"),
    ("vudzi", "ʋ u dz i"),
    ("zuva", "z u ʋ a"),
    ("uya", "u j a"),
    ("kuuya", "k u u j a"),
    ("aiwa", "a i w a"),
    ("sei", "s e i"),
    # Syllabic nasals: no vowel follows the nasal ("mti", tree, is the Manyika form of muti;
    # "hm" an interjection). Contrast mhuka (breathy m), mbudzi (prenasalised), n'anga (ŋ + vowel).
    ("mti", "m̩ t i"),
    ("hm", "ɦ m̩"),
]

PHRASES = [
    ("Mhoro, makadii?", "m̤ o ɾ o , m a k a ɗ i i ?"),
    ("Mangwanani akanaka.", "m a ŋɡʷ a n a n i a k a n a k a ."),
    ("Mamiriro ekunze nhasi", "m a m i ɾ i ɾ o e k u nz e n̤ a s i"),
    ("Ndinoda kubatsirwa!", "nd i n o ɗ a k u ɓ a ts i ɾʷ a !"),
]

PARAGRAPH = (
    "Mhoro shamwari! Makadii mangwanani ano? Isu tiri kuenda kumusha kwedu kuMasvingo nebhazi "
    "rinosimuka nhasi. Mvura yakanaya zvikuru nezuro, saka nzizi dzose dzakazara uye mugwagwa une "
    "madhaka. Ambuya vangu vanorima chibage, nzungu nemuriwo; vanochengetawo mombe, mbudzi nehuku. "
    "Kana tasvika, tichabatsira kutyora huni, kuchera mvura patsime uye kudyara mbeu. Vana "
    "vanofarira kutamba nebhora pasi pemuti mukuru, asi mhuka dzesango dzinovatyisa. Muzhizha "
    "dzvinyu rinozorora pabwe, uye n'anga yakapfeka nguo tsvuku. Manheru tinodya sadza nenyama "
    "yembudzi, tozorara takaneta: ndinoda kusvika ndisati ndanonoka, nokuti zuva rinovira "
    "nokukurumidza!"
)


@pytest.mark.parametrize(("word", "expected"), WORDS)
def test_word_phonemes(word: str, expected: str) -> None:
    assert shona_ipa(word) == expected.split()


def test_table_covers_every_grapheme_rule() -> None:
    used = {grapheme for word, _ in WORDS for grapheme in shona_g2p(word).graphemes}
    required = {"mb", "nd", "ng", "ng'", "n'", "ny", "ch", "sh", "zh", "sv", "zv", "tsv", "dzv", "ts",
                "dz", "bh", "dh", "vh", "mh", "nh", "pf", "bv", "ty", "dy", "tw", "dw", "kw", "gw",
                "hw", "rw", "mv", "nz", "nzv", "nj", "mw", "nw", "ngw", "j", "y", "w"}
    # tw, dw are not in the word table: check them here against the same labialisation rule.
    used |= set(shona_g2p("kutwasuka").graphemes) | set(shona_g2p("kudwa").graphemes)
    assert required <= used, required - used


@pytest.mark.parametrize(("phrase", "expected"), PHRASES)
def test_phrase_phonemes(phrase: str, expected: str) -> None:
    segments = segment(phrase, stress=False)
    assert all(s.lang in ("sn", "punct") for s in segments)
    assert [p for s in segments for p in s.phonemes] == expected.split()


def test_paragraph_every_letter_is_read_exactly_once() -> None:
    segments = segment(PARAGRAPH, stress=False)
    words = [s for s in segments if s.lang != "punct"]
    assert [s.lang for s in words] == ["sn"] * len(words), [s.text for s in words if s.lang != "sn"]
    for word in words:
        result = shona_g2p(word.text)
        assert result.unknown == [], word.text
        # The graphemes tile the word: each character is consumed by exactly one rule.
        assert "".join(result.graphemes) == normalise_word(word.text)
        assert len(result.graphemes) == len(result.phonemes) == len(word.phonemes)
    consumed = sum(len(g.replace("'", "")) for w in words for g in shona_g2p(w.text).graphemes)
    assert consumed == sum(ch.isalpha() for ch in PARAGRAPH)
    assert "".join(s.text for s in segments) == "".join(PARAGRAPH.split())


def test_unknown_letters_are_reported_never_dropped() -> None:
    result = shona_g2p("lala")
    assert result.unknown == ["l", "l"]
    assert result.graphemes == ["a", "a"]
    with pytest.raises(UnknownGraphemeError) as raised:
        shona_ipa("xylo")
    assert raised.value.unknown == ["x", "l"]
    with pytest.raises(UnknownGraphemeError):
        shona_ipa("café")


def test_penultimate_stress_goes_before_the_vowel_like_espeak() -> None:
    assert shona_ipa("Harare", stress=True) == ["ɦ", "a", "ɾ", STRESS, "a", "ɾ", "e"]
    assert shona_ipa("sei", stress=True) == ["s", STRESS, "e", "i"]
    assert shona_ipa("mbudzi", stress=True) == ["mb", STRESS, "u", "dz", "i"]
    assert shona_ipa("mti", stress=True) == [STRESS, "m̩", "t", "i"]
    assert shona_ipa("ne", stress=True) == ["n", "e"]  # one syllable: unstressed
    assert add_stress([]) == []
    (word,) = segment("kuenda")
    assert word.phonemes.count(STRESS) == 1


@pytest.mark.parametrize(
    ("number", "words"),
    [
        (0, "ziro"),
        (1, "poshi"),
        (7, "nomwe"),
        (10, "gumi"),
        (11, "gumi neimwe"),
        (19, "gumi nepfumbamwe"),
        (25, "makumi maviri neshanu"),
        (40, "makumi mana"),
        (100, "zana"),
        (110, "zana negumi"),
        (365, "mazana matatu nemakumi matanhatu neshanu"),
        (1000, "churu"),
        (1001, "churu neimwe"),
        (2026, "zvuru zviviri nemakumi maviri nenhanhatu"),
        (25_000, "zvuru makumi maviri neshanu"),
    ],
)
def test_numbers_in_shona(number: int, words: str) -> None:
    assert number_to_shona(number) == words


def test_every_number_reads_as_shona_words() -> None:
    for n in [*range(0, 1200), 9_999, 10_000, 123_456, 999_999]:
        text = number_to_shona(n)
        for word in text.split():
            assert not is_probably_english(word), (n, word)
            shona_ipa(word)  # every letter has a rule
    for bad in (-1, 1_000_000):
        with pytest.raises(ValueError):
            number_to_shona(bad)


def test_expand_numbers_in_a_sentence() -> None:
    assert expand_numbers("Ndine mombe 25 nembudzi 3.") == (
        "Ndine mombe makumi maviri neshanu nembudzi tatu."
    )
    assert expand_numbers("Mvura yakawanda 3.5 cm") == "Mvura yakawanda tatu poindi shanu cm"
    assert expand_numbers("Mari 12,500") == "Mari zvuru gumi nembiri nemazana mashanu"
    assert expand_numbers("Fonera 0772") == f"Fonera {digits_to_shona('0772')}"
    assert expand_numbers("1234567") == digits_to_shona("1234567")
    assert expand_numbers("kuma2026") == "kuma zvuru zviviri nemakumi maviri nenhanhatu"
    assert expand_numbers("hapana") == "hapana"


def test_segment_reads_numbers_as_shona() -> None:
    segments = segment("Gore ra2026 rine mazuva 365.")
    assert [s.lang for s in segments if s.lang != "punct"] == ["sn"] * (len(segments) - 1)
    assert [s.text for s in segments][2:5] == ["zvuru", "zviviri", "nemakumi"]
    assert not any(ch.isdigit() for s in segments for ch in s.text)


def test_english_words_in_shona_text() -> None:
    segments = segment("Ndiri kuenda ku Google office")
    assert [(s.lang, s.text) for s in segments] == [
        ("sn", "Ndiri"), ("sn", "kuenda"), ("sn", "ku"), ("en", "Google"), ("en", "office"),
    ]
    assert segments[3].phonemes == [] and segments[0].phonemes


@pytest.mark.parametrize(
    "word",
    ["Google", "office", "network", "the", "phone", "WhatsApp", "meeting", "hello", "zoom", "I",
     "bus", "it's", "café", "data", "time", "street"],
)
def test_english_looking_words(word: str) -> None:
    assert is_probably_english(word)


@pytest.mark.parametrize(
    "word",
    ["Tendai", "Chipo", "Harare", "mangwanani", "n'anga", "ng'ombe", "kuuya", "Zimbabwe", "here",
     "mti", "a", "sei", "nzvimbo"],
)
def test_shona_words_are_not_english(word: str) -> None:
    assert not is_probably_english(word)


def test_other_symbols_are_kept_as_silent_punctuation() -> None:
    segments = segment('"Mhoro" - shamwari... (hongu)?!')
    assert [(s.lang, s.text, s.phonemes) for s in segments if s.lang == "punct"] == [
        ("punct", '"', []), ("punct", '"', []), ("punct", "-", []), ("punct", "...", ["."]),
        ("punct", "(", []), ("punct", ")", []), ("punct", "?!", ["?"]),
    ]


def test_voice_symbol_substitutions_are_reported() -> None:
    symbols, report = to_voice_symbols(["ɓ", "a", "m̤", "s͎", "ˈ", "ǂ"], {"a", "b", "m", "h", "s", "w"})
    assert symbols == ["b", "a", "m", "h", "s", "w"]
    assert report == ["ɓ→b", "m̤→mh", "s͎→sw", "ˈ→∅", "ǂ→?"]
    # Each change is reported once; symbols the voice has are passed through untouched.
    assert to_voice_symbols(["ɓ", "ɓ", "a"], {"a", "b"}) == (["b", "b", "a"], ["ɓ→b"])
    assert to_voice_symbols(["tʃ", "a"], {"t", "ʃ", "a"}) == (["t", "ʃ", "a"], [])


@pytest.fixture(scope="module")
def voice_symbols() -> set[str]:
    path = Settings().models_dir / VOICE_CONFIG
    if not path.is_file():
        pytest.skip(f"Piper voice config not found at {path} (run `inzwa models fetch`)")
    symbols = set(json.loads(path.read_text(encoding="utf-8"))["phoneme_id_map"])
    assert all(len(symbol) == 1 for symbol in symbols)
    return symbols


def _paragraph_phonemes() -> list[str]:
    phonemes: list[str] = []
    for s in segment(PARAGRAPH + " " + " ".join(word for word, _ in WORDS)):
        phonemes.extend([*s.phonemes, " "] if s.lang == "sn" else s.phonemes)
    return phonemes


def test_voice_symbols_with_the_full_map(voice_symbols: set[str]) -> None:
    symbols, report = to_voice_symbols(_paragraph_phonemes(), voice_symbols)
    assert symbols and set(symbols) <= voice_symbols
    assert not [entry for entry in report if "?" in entry]
    # The voice has ɓ ɗ ɲ ʋ ɦ (so they pass through) but no ʷ, breathy or whistled mark.
    assert {"ɓ", "ɗ", "ɲ", "ʋ", "ɦ", "ɡ"} <= set(symbols)
    assert {"m̤→mɦ", "s͎→sw", "b̤→b", "kʷ→kw"} <= set(report)


def test_voice_symbols_with_what_an_english_voice_learned(voice_symbols: set[str]) -> None:
    available = voice_symbols & EN_US_ESPEAK_SYMBOLS
    symbols, report = to_voice_symbols(_paragraph_phonemes(), available)
    assert set(symbols) <= available
    assert not [entry for entry in report if "?" in entry]
    assert {"ɓ→b", "ɗ→d", "ɲ→nj", "ʋ→v", "ɦ→h", "m̤→mh", "ɦʷ→hw"} <= set(report)
    assert STRESS in symbols and "ɾ" in symbols and "ŋ" in symbols
    assert all(unicodedata.category(symbol) != "Mn" or symbol == "\u0329" for symbol in symbols)
