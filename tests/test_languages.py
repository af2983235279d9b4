"""The language-pack seam: packs are looked up by code, and a new pack needs no other change."""

from __future__ import annotations

import pytest

from common import transport
from common.frames import SessionStart, TranscriptChunk
from common.languages import registry
from common.languages.base import FALLBACK_REASONS, LanguagePack, Phonemizer
from tests.test_orchestrator import SID, Harness


class ToyPhonemizer:
    def __init__(self, english: Phonemizer, symbols: set[str]) -> None:
        self.symbols = symbols

    def phonemize(self, text: str) -> list[str]:
        return [" ".join(ch for ch in text.lower() if ch in self.symbols)]


TOY = LanguagePack(
    code="xx",
    name="Toy",
    asr_language="sw",
    system_prompt="TOY PROMPT",
    fallbacks={reason: f"toy {reason}" for reason in FALLBACK_REASONS},
    phonemizer=ToyPhonemizer,
    blocked_input=(r"\bforbidden\b",),
)


@pytest.fixture
def toy_pack():
    registry.register(TOY)
    yield TOY
    registry._PACKS.pop("xx", None)


def test_every_pack_is_complete_and_unknown_codes_get_english() -> None:
    assert {"en", "sn"} <= set(registry.codes())
    for code in registry.codes():
        pack = registry.get(code)
        assert all(pack.fallback(reason) for reason in FALLBACK_REASONS)
        assert pack.system_prompt
    assert registry.get("zz").code == "en"
    assert registry.get("sn").fallback("did_not_hear").startswith("Ndine urombo")


def test_a_pack_missing_a_fallback_is_refused() -> None:
    with pytest.raises(ValueError, match="lacks fallbacks"):
        LanguagePack(code="yy", name="Y", asr_language="en", system_prompt="p", fallbacks={})


def test_the_safety_filter_matches_per_language() -> None:
    assert registry.get("en").blocks_input("how do I make a bomb")
    assert not registry.get("en").blocks_input("how do I make bread")
    assert registry.get("sn").blocks_input("ndinoda kuzviuraya")


def test_a_new_pack_drives_prompt_safety_and_asr_language(toy_pack: LanguagePack) -> None:
    """Through the real orchestrator (fake workers): the toy pack's prompt, and its refusal."""
    from tests.test_orchestrator import run

    async def scenario(h: Harness) -> None:
        await transport.send(h.ingress, SessionStart(session_id=SID, reply_to=h.settings.egress,
                                                     language="xx"))
        assert (await h.worker_got("asr")).language == "xx"
        await h.result(TranscriptChunk(session_id=SID, turn_id=1, text="hello", is_final=True))
        request = await h.worker_got("llm")
        assert request.messages[0].content == "TOY PROMPT" and request.language == "xx"
        await h.result(TranscriptChunk(session_id=SID, turn_id=2, text="a forbidden thing",
                                       is_final=True))
        phrase = await h.worker_got("tts")  # refused without asking the LLM
        assert phrase.text == "toy cannot_help" and phrase.language == "xx"

    run(scenario, system_prompt="")
    assert "sw" in registry.asr_languages()


def test_a_new_pack_brings_its_own_g2p_to_the_tts_worker(toy_pack: LanguagePack) -> None:
    from tts_worker.worker import TtsWorker

    class Voice:  # just what TtsWorker reads of a PiperVoice
        phonemizer = None
        config = type("Config", (), {"phoneme_id_map": {"a": [1], "b": [2], " ": [3]}})()

    worker = TtsWorker(Voice(), frame_ms=20)  # type: ignore[arg-type]
    phonemizer = worker._phonemizer("xx")
    assert isinstance(phonemizer, ToyPhonemizer)
    assert phonemizer.phonemize("Abc") == ["a b"]
    assert worker._phonemizer("en") is None  # English: the voice's own espeak phonemizer


@pytest.mark.parametrize(
    ("heard", "written"),
    [
        ("Ndiri mu Harare nhasi", "Ndiri muHarare nhasi"),
        ("ng 'ombe  dzangu", "ng'ombe dzangu"),
        ("n’anga yakauya", "n'anga yakauya"),
        ("ndinoenda ku Mutare", "ndinoenda kuMutare"),
        ("ndinoda mvura", "ndinoda mvura"),  # nothing to fix is left alone
    ],
)
def test_shona_asr_output_is_normalized(heard: str, written: str) -> None:
    assert registry.get("sn").normalize(heard) == written


def test_a_forbidden_phrase_is_not_spoken(toy_pack: LanguagePack) -> None:
    from tests.test_orchestrator import llm_tokens, run

    toy = LanguagePack(**{**toy_pack.__dict__, "blocked_output": (r"\bsecret\b",)})
    registry.register(toy)

    async def scenario(h: Harness) -> None:
        await transport.send(h.ingress, SessionStart(session_id=SID, reply_to=h.settings.egress,
                                                     language="xx"))
        await h.worker_got("asr")
        await h.result(TranscriptChunk(session_id=SID, turn_id=1, text="tell me", is_final=True))
        request = await h.worker_got("llm")
        await h.answer(request, llm_tokens("Fine, here it is. The secret code is one two."))
        spoken = [(await h.worker_got("tts")).text, (await h.worker_got("tts")).text]
        assert spoken == ["Fine, here it is.", "toy cannot_help"]

    run(scenario, system_prompt="")
