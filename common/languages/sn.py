"""Shona (chiShona).

The default models are English: Whisper base knows Shona ("sn") but only roughly, SmolLM2 writes
little Shona, and the Piper voice is English. This pack makes the rest Shona (prompts, fallbacks,
G2P onto the voice's symbols) so that a Shona Whisper, a Shona GGUF and a Shona voice slot in
through settings alone.
"""

from __future__ import annotations

import re

from common.languages.base import LanguagePack, Phonemizer

_APOSTROPHES = re.compile(r"[\u2018\u2019\u02bc`´]")
_LOOSE_NG = re.compile(r"\b(ng|n)\s*'\s*(?=[aeiou])", re.IGNORECASE)
# Locative and other prefixes are written joined to a proper noun: "muHarare", "kuMutare".
_LOOSE_PREFIX = re.compile(r"\b(mu|ku|pa|ne|se|ve|we|ye|ze|che|dze|ne)\s+(?=[A-Z])")


def normalize(text: str) -> str:
    """Shona orthography for ASR output: one apostrophe, ng'/n' joined to their vowel,
    prefixes joined to proper nouns, single spaces."""
    text = _APOSTROPHES.sub("'", text)
    text = _LOOSE_NG.sub(lambda m: m.group(1) + "'", text)
    text = _LOOSE_PREFIX.sub(lambda m: m.group(1), text)
    return " ".join(text.split())


def _speech_text(text: str) -> str:
    from common.languages.sn_normalize import normalize as speech_text

    return speech_text(text)


def _phonemizer(english: Phonemizer, symbols: set[str]) -> Phonemizer:
    from common.languages.sn_tts import ShonaPhonemizer

    return ShonaPhonemizer(english, symbols)


SHONA = LanguagePack(
    code="sn",
    name="chiShona",
    asr_language="sn",
    asr_initial_prompt="Harare, Bulawayo, Mutare, Gweru, Masvingo, Zimbabwe.",
    system_prompt=(
        "Uri Inzwa, mubatsiri ane hushamwari anotaura chiShona. Pindura nechiShona chete, "
        "nemitsara miviri mipfupi, pasina manyorerwo akaoma kana ma emoji."
    ),
    fallbacks={
        "did_not_hear": "Ndine urombo, handina kunzwa zvakanaka. Mungadzokorora here?",
        "llm_timeout": "Ndine urombo, ndiri kunonoka kufunga. Ndapota bvunzazve.",
        "cannot_help": "Ndine urombo, handikwanisi kukubatsirai nezvizvo.",
        "handover": "Regai ndikuendesei kumunhu anogona kukubatsirai.",
        "unavailable": "Ndine urombo, handikwanisi kupindura izvozvi. Edzai zvakare gare gare.",
        # (overload: "I am busy with many people now. Ask again a little later.")
        "busy": "Ndine urombo, ndakabatikana nevanhu vakawanda izvozvi. Bvunzazve gare gare.",
    },
    phonemizer=_phonemizer,
    speech_text=_speech_text,  # ShonaPhonemizer runs it itself (sn_g2p.segment)
    normalize=normalize,
    # Shona inflects with prefixes and joined words (ndinoda kuzviuraya, achazviuraya,
    # mabhomba): the patterns allow them instead of a stemmer.
    blocked_input=(
        ("self_harm", r"\b\w*zviuray\w*\b"),  # -zviuraya: to kill oneself, in any person/tense
        ("weapons", r"\b(ma|re)?bhomba\b"),  # bomb(s)
    ),
    blocked_output=(
        ("self_harm", r"\b\w*zviuray\w*\b"),
        ("weapons", r"\b\w*gadzir\w* (ma|re)?bhomba\b"),  # -gadzira bhomba: make a bomb
        ("violence", r"\b\w*uray\w* (munhu|vanhu)\b"),  # -uraya munhu: kill a person/people
    ),
)
