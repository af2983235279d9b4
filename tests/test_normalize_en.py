"""English through the same normalization stage as Shona: the same classes, in English words,
before the voice's own espeak-ng reads them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from common.languages import registry
from common.languages.en_normalize import NORMALIZER, normalize, number_to_english, ordinal_to_english
from common.languages.sn_normalize import normalize as shona_normalize

TABLE = [
    # Money.
    ("$5", "five dollars"),
    ("$1", "one dollar"),
    ("$5.50", "five dollars and fifty cents"),
    ("$0.01", "one cent"),
    ("US$20", "twenty US dollars"),
    ("ZWL 1000", "one thousand Zimbabwe dollars"),
    ("ZiG 100", "one hundred zigs"),
    ("R50", "fifty rand"),
    ("£3.20", "three pounds and twenty pence"),
    ("€1", "one euro"),
    ("-$5", "minus five dollars"),
    ("$5 million", "five million dollars"),
    ("$2,500", "two thousand five hundred dollars"),
    # Percent, decimals, negatives, ranges, ordinals.
    ("50%", "fifty percent"),
    ("12.5%", "twelve point five percent"),
    ("3.5", "three point five"),
    ("-12", "minus twelve"),
    ("5-10", "five to ten"),
    ("$5–$10", "five dollars to ten dollars"),
    ("1st", "first"),
    ("3rd", "third"),
    ("21st", "twenty-first"),
    ("12th", "twelfth"),
    ("40th", "fortieth"),
    # Times.
    ("10:30", "ten thirty"),
    ("10:05", "ten oh five"),
    ("7am", "seven a m"),
    ("7 p.m.", "seven p m"),
    ("14h00", "two p m"),
    ("9:00", "nine o'clock"),
    # Dates and weekdays.
    ("12/03/2025", "the twelfth of March twenty twenty-five"),
    ("12 March 2025", "the twelfth of March twenty twenty-five"),
    ("2025-03-12", "the twelfth of March twenty twenty-five"),
    ("March 12, 2025", "the twelfth of March twenty twenty-five"),
    ("1/1/2005", "the first of January two thousand and five"),
    ("Monday 5 May", "Monday the fifth of May"),
    # Phone numbers, abbreviations, URLs, e-mails, symbols, measures.
    ("+263 77 123 4567", "plus two six three, seven seven, one two three, four five six seven"),
    ("0772123456", "zero seven seven two, one two three, four five six"),
    ("ZESA", "Zesa"),
    ("Dr. Moyo", "Doctor Moyo"),
    ("Mr Moyo", "Mister Moyo"),
    ("https://www.zesa.co.zw/bills", "zesa dot C O dot Z W"),
    ("info@zesa.co.zw", "info at zesa dot C O dot Z W"),
    ("A & B", "A and B"),
    ("5km", "five kilometres"),
    ("1 km", "one kilometre"),
    ("30°C", "thirty degrees Celsius"),
    ("It costs $5.50, not $6.", "It costs five dollars and fifty cents , not six dollars ."),
    ("No, thanks. Room No. 5", "No , thanks . Room number five"),  # "No." only before a number
]


@pytest.mark.parametrize(("text", "expected"), TABLE)
def test_english_reading_table(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize(
    ("n", "words"),
    [(0, "zero"), (13, "thirteen"), (40, "forty"), (105, "one hundred and five"),
     (1000, "one thousand"), (1_001, "one thousand and one"), (21_500, "twenty-one thousand five hundred"),
     (3_000_000, "three million")],
)
def test_english_numbers(n: int, words: str) -> None:
    assert number_to_english(n) == words


def test_english_ordinals() -> None:
    assert [ordinal_to_english(n) for n in (1, 2, 3, 5, 8, 9, 12, 20, 22, 100)] == [
        "first", "second", "third", "fifth", "eighth", "ninth", "twelfth", "twentieth",
        "twenty-second", "one hundredth"]


SAME_CLASSES = ["$5.50", "US$20", "ZiG 100", "R50", "£3.20", "50%", "-12", "5-10", "3rd", "10:30",
                "7am", "14h00", "12/03/2025", "2025-03-12", "12 March 2025", "+263 77 123 4567",
                "https://www.zesa.co.zw/bills", "info@zesa.co.zw", "5km", "A & B", "☃"]


@pytest.mark.parametrize("text", SAME_CLASSES)
def test_both_packs_write_every_class_out_in_words(text: str) -> None:
    for said in (normalize(text), shona_normalize(text)):
        assert not any(ch.isdigit() for ch in said), said
        assert not set(said) & set("$£€%@&/:+☃"), said


def test_the_english_pack_normalizes_and_counts_unknown_symbols() -> None:
    before = NORMALIZER.unknown
    assert registry.get("en").speech_text("Pay $5 ☃ now") == "Pay five dollars symbol now"
    assert NORMALIZER.unknown == before + 1


@pytest.fixture(scope="module")
def espeak() -> Iterator[object]:
    from tts_worker.phonemizer import EspeakPhonemizer, PhonemizerError

    try:
        phonemizer = EspeakPhonemizer("en-us")
    except PhonemizerError as exc:
        pytest.skip(str(exc))
    yield phonemizer
    phonemizer.close()


def test_the_piper_voice_reads_the_packs_normalized_text(espeak: object) -> None:
    """The voice's own espeak-ng gets the English pack's words, not "$5.50"."""
    from tests.test_tts_engine import FakeSession
    from tts_worker.engine import PiperVoice, VoiceConfig
    from tts_worker.phonemizer import EspeakPhonemizer

    heard: list[str] = []

    class Recording(EspeakPhonemizer):  # the real espeak-ng, and what it was given
        def phonemize(self, text: str) -> list[str]:
            heard.append(text)
            return super().phonemize(text)

    from tests.test_tts_engine import TINY_CONFIG

    voice = PiperVoice(VoiceConfig.from_dict(TINY_CONFIG), FakeSession(), Recording("en-us"))
    frames = list(voice.synthesize_stream("It costs $5.50 on 12/03/2025.", language="en"))
    assert frames
    assert heard == ["It costs five dollars and fifty cents on the twelfth of March twenty "
                     "twenty-five ."]
    said = espeak.phonemize(heard[0])  # type: ignore[attr-defined]
    assert said == espeak.phonemize(  # type: ignore[attr-defined]
        "It costs five dollars and fifty cents on the twelfth of March twenty twenty-five.")
