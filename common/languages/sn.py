"""Shona (chiShona).

The default models are English: Whisper base knows Shona ("sn") but only roughly, SmolLM2 writes
little Shona, and the Piper voice is English. This pack makes the rest Shona (prompts, fallbacks,
G2P onto the voice's symbols) so that a Shona Whisper, a Shona GGUF and a Shona voice slot in
through settings alone.
"""

from __future__ import annotations

from common.languages.base import LanguagePack, Phonemizer


def _phonemizer(english: Phonemizer, symbols: set[str]) -> Phonemizer:
    from common.languages.sn_tts import ShonaPhonemizer

    return ShonaPhonemizer(english, symbols)


SHONA = LanguagePack(
    code="sn",
    name="chiShona",
    asr_language="sn",
    asr_initial_prompt="Mhoro, makadii? Ndinoda kubatsirwa. Harare, Bulawayo, Mutare.",
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
    },
    phonemizer=_phonemizer,
    blocked_input=(r"\bkuzviuraya\b", r"\bbhomba\b"),
)
