"""The TTS worker's voice LRU (issue 13, the seed's model LRU): a language with a voice of its own
is spoken with it, loaded on first use; at most `tts_loaded_voices` stay loaded, the least
recently used unloaded first and the configured voice never; each load is timed in a metric.
In-process with the fake voice (no second real voice is installed here): what is under test is
which engine speaks and when it is loaded, not the audio."""

from __future__ import annotations

import asyncio
from collections import Counter

from prometheus_client import REGISTRY

from common.frames import AudioChunk, SynthesizeRequest
from common.metrics import MODELS_LOADED
from common.settings import Settings
from tests.test_engine_failures import RecordingRuntime, stop
from tts_worker.engines.fake import FakeTts
from tts_worker.interface import TTS
from tts_worker.registry import load_engine
from tts_worker.voices import VoiceLibrary, settings_loader
from tts_worker.worker import TtsWorker

SPEED = {"default": 10, "sn-voice": 30, "xx-voice": 20, "yy-voice": 40}  # ms of audio per char


def loads() -> float:
    return REGISTRY.get_sample_value("inzwa_model_load_ms_count", {"kind": "tts"}) or 0.0


class Loader:
    """Loads fake voices that differ in speed (so the audio says which one spoke); counts loads."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __call__(self, name: str) -> TTS:
        if name == "broken-voice":
            raise FileNotFoundError(name)
        self.calls[name] += 1
        return FakeTts(ms_per_char=SPEED[name], rtf=0.0)


def library(loader: Loader, capacity: int = 2) -> VoiceLibrary:
    by_language = {"sn": "sn-voice", "xx": "xx-voice", "yy": "yy-voice", "zz": "broken-voice"}
    return VoiceLibrary("default", FakeTts(ms_per_char=SPEED["default"], rtf=0.0), loader,
                        capacity=capacity, by_language=by_language)


def test_the_least_recently_used_voice_goes_and_the_configured_one_stays() -> None:
    loader, before = Loader(), loads()

    async def main() -> list[list[str]]:
        voices = library(loader)
        seen = []
        for name in ("sn-voice", "sn-voice", "xx-voice", "sn-voice", "default", "xx-voice"):
            assert (await voices.get(name))[0] == name
            seen.append(voices.loaded())
        return seen

    seen = asyncio.run(main())
    assert seen[1] == ["default", "sn-voice"]  # (the second use loads nothing)
    assert seen[2] == ["default", "xx-voice"]  # over 2: sn-voice (least recent) is unloaded
    assert seen[3] == ["default", "sn-voice"] and seen[5] == ["default", "xx-voice"]
    assert loader.calls == {"sn-voice": 2, "xx-voice": 2}
    assert loads() - before == 4 and MODELS_LOADED.labels("tts")._value.get() == 2


def test_a_request_is_spoken_with_its_languages_voice_or_the_configured_one() -> None:
    loader = Loader()
    voices = library(loader, capacity=3)
    assert voices.name_for("", "sn") == "sn-voice" and voices.name_for("", "en") == "default"
    assert voices.name_for("xx-voice", "en") == "xx-voice"  # a configured voice, by name
    assert voices.name_for("alloy", "en") == "default"  # not a voice of this worker

    async def main() -> dict[str, int]:
        worker = TtsWorker(voices._loaded["default"], frame_ms=20, voices=voices)
        runtime = RecordingRuntime("tts")
        worker.runtime = runtime  # type: ignore[assignment]
        serving = asyncio.create_task(worker.run())
        frames = {}
        for rid, language in (("en", "en"), ("sn", "sn"), ("en2", "en"), ("zz", "zz")):
            await worker.handle(SynthesizeRequest(session_id="s1", turn_id=1, request_id=rid,
                                                  text="Mhoro, makadii?", language=language))
            await runtime.wait_for(runtime.final_of(rid))
            frames[rid] = len([c for c in runtime.of(AudioChunk, rid) if c.payload])
        await stop(serving)
        return frames

    frames = asyncio.run(main())
    assert frames["sn"] >= 2.5 * frames["en"] and frames["en2"] == frames["en"], frames
    assert frames["zz"] == frames["en"]  # its voice failed to load: the configured one spoke
    assert loader.calls == {"sn-voice": 1}


def test_another_voice_loads_exactly_as_the_configured_one() -> None:
    settings = Settings(_env_file=None, tts_engine="fake", tts_model="piper-en-us-joe-medium")  # type: ignore[call-arg]

    async def main() -> str:
        voices = VoiceLibrary(settings.tts_model, load_engine(settings),
                              settings_loader(settings, load_engine), capacity=3,
                              by_language={"sn": "another-voice"})
        name, voice = await voices.get(voices.name_for("", "sn"))
        return f"{name}:{voice.info()['engine']}"

    assert asyncio.run(main()) == "another-voice:fake"
