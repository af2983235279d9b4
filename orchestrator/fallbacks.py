"""Short replies spoken when the assistant cannot give a real one, per language.

The language packs (issue 6) will own these; until then English and Shona live here.
"""

from __future__ import annotations

FALLBACKS: dict[str, dict[str, str]] = {
    "en": {
        "llm_timeout": "Sorry, I am taking too long to think. Please ask me again.",
        "unavailable": "Sorry, I cannot answer right now. Please try again in a moment.",
    },
    "sn": {
        "llm_timeout": "Ndine urombo, ndiri kunonoka kufunga. Ndapota bvunzazve.",
        "unavailable": "Ndine urombo, handikwanisi kupindura izvozvi. Edza zvakare gare gare.",
    },
}


def fallback(language: str, reason: str) -> str:
    return FALLBACKS.get(language, FALLBACKS["en"]).get(reason, FALLBACKS["en"][reason])
