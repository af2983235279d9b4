"""Each language pack's handoff data (handoff area, issue 14), by language code.

Kept beside the packs rather than in `LanguagePack` so a pack without handoff data still loads:
a language with none falls back to English patterns (the handover phrase itself is the pack's
own `fallbacks["handover"]`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import ModuleType

from common.languages import handoff_en, handoff_sn


@dataclass(frozen=True)
class HandoffData:
    code: str
    explicit: tuple[re.Pattern[str], ...]
    not_explicit: tuple[re.Pattern[str], ...]
    phrases: dict[str, str]
    frustrated: tuple[str, ...]  # labelled training phrases
    calm: tuple[str, ...]


def _load(code: str, module: ModuleType) -> HandoffData:
    return HandoffData(code, tuple(re.compile(p) for p in module.EXPLICIT),
                       tuple(re.compile(p) for p in module.NOT_EXPLICIT), dict(module.PHRASES),
                       tuple(module.FRUSTRATED), tuple(module.CALM))


_DATA = {"en": _load("en", handoff_en), "sn": _load("sn", handoff_sn)}


def get(code: str) -> HandoffData:
    """The language's data; English for a language that has none."""
    return _DATA.get(code) or _DATA["en"]


def codes() -> list[str]:
    return sorted(_DATA)
