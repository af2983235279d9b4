"""The enabled language packs, by code."""

from __future__ import annotations

from common.languages.base import LanguagePack
from common.languages.en import ENGLISH
from common.languages.sn import SHONA

_PACKS: dict[str, LanguagePack] = {}


def register(pack: LanguagePack) -> None:
    _PACKS[pack.code] = pack


def get(code: str) -> LanguagePack:
    """The pack for `code`; unknown codes get English, so a session never runs without one."""
    return _PACKS.get(code) or _PACKS["en"]


def codes() -> list[str]:
    return sorted(_PACKS)


def asr_languages() -> list[str]:
    """Whisper codes of the enabled packs: what `auto` chooses among."""
    return sorted({pack.asr_language for pack in _PACKS.values()})


def asr_initial_prompts() -> dict[str, str]:
    """Whisper language -> the words its sessions should expect (from the packs that have any)."""
    return {p.asr_language: p.asr_initial_prompt for p in _PACKS.values() if p.asr_initial_prompt}


for _pack in (ENGLISH, SHONA):
    register(_pack)
