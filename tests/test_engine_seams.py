"""The engine seams: a registry per worker kind, engines that report what they loaded, a new
engine in one file plus one registry line, and the scripted fakes the supervision tests use."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from asr_worker import registry as asr_registry
from asr_worker.session import AsrSession, SpeechStarted, Transcript
from common.audio import SAMPLE_RATE, read_wav, rms_dbfs
from common.models import CATALOGUE, file_sha256, model_info
from common.settings import Settings
from llm_worker.engines.fake import FakeLlm
from llm_worker.registry import load_engine as load_llm
from tts_worker.engines.fake import FakeTts
from tts_worker.registry import load_engine as load_tts


def test_file_hashes_are_computed_and_follow_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"first weights")
    assert file_sha256(weights) == hashlib.sha256(b"first weights").hexdigest()
    assert (tmp_path / "cache" / "inzwa" / "sha256-cache.json").exists()  # a restart rehashes nothing
    weights.write_bytes(b"other weights, longer")
    assert file_sha256(weights) == hashlib.sha256(b"other weights, longer").hexdigest()


@pytest.mark.models
def test_real_engines_report_the_checksum_of_what_they_loaded(settings: Settings) -> None:
    """Loaded as the workers load them: through the registries, from the settings."""
    for load, model, kind in ((asr_registry.load_engine, settings.asr_model, "faster-whisper"),
                              (load_tts, settings.tts_model, "piper-onnx"),
                              (load_llm, settings.llm_model, "llama-cpp")):
        info = load(settings).info()  # type: ignore[operator]
        assert info["device"] == "cpu" and info["engine"] == kind
        # computed from the loaded file's bytes, and equal to the catalogue's pin
        assert info["sha256"] == model_info(model, settings.models_dir)["sha256"]
        assert (info["name"], info["version"]) == (model, CATALOGUE[model].version)


NEW_ENGINE = '''
"""A one-file ASR engine: hears every utterance as how many seconds it lasted."""
import numpy as np
from asr_worker.interface import FileTranscript, TimedSegment, Transcription

def create(settings):
    return SecondsAsr()

class SecondsAsr:
    partials = False
    def info(self):
        return {"name": "seconds", "version": "1", "sha256": "", "device": "cpu", "engine": "seconds"}
    def warmup(self):
        pass
    def transcribe(self, audio, language=None):
        return Transcription(f"{audio.size / 16000:.1f} seconds", 1.0, language or "en")
    def transcribe_file(self, audio, language=None):
        heard = self.transcribe(audio, language)
        return FileTranscript([TimedSegment(0.0, audio.size / 16000, heard.text, 1.0)], "en", 1.0,
                              audio.size / 16000)
'''


def test_a_new_engine_is_one_file_and_one_registry_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixtures_dir: Path
) -> None:
    (tmp_path / "seconds_engine.py").write_text(NEW_ENGINE)  # the one file
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(asr_registry.ENGINES, "seconds", "seconds_engine")  # the one line
    engine = asr_registry.load_engine(Settings(_env_file=None, asr_engine="seconds"))
    assert engine.info()["engine"] == "seconds"
    pcm, _ = read_wav(fixtures_dir / "q_en_capital.wav")
    session = AsrSession(engine, language="en")  # streaming comes from the adapter, for free
    events = [e for i in range(0, len(pcm), 640) for e in session.feed(pcm[i : i + 640])]
    events += session.end_turn()
    assert isinstance(events[0], SpeechStarted)
    finals = [e for e in events if isinstance(e, Transcript) and e.is_final]
    assert len(finals) == 1 and finals[0].text.endswith(" seconds")
    sys.modules.pop("seconds_engine", None)


def test_the_fake_asr_hears_its_script_only_when_there_is_sound(fixtures_dir: Path) -> None:
    engine = asr_registry.load_engine(Settings(_env_file=None, asr_engine="fake",
                                               fake_asr_text="mhoro shamwari"))
    pcm, _ = read_wav(fixtures_dir / "q_en_weather.wav")
    session = AsrSession(engine, language="sn")
    events = [e for i in range(0, len(pcm), 640) for e in session.feed(pcm[i : i + 640])]
    events += session.end_turn()
    finals = [e for e in events if isinstance(e, Transcript) and e.is_final]
    assert [(f.text, f.language) for f in finals] == [("mhoro shamwari", "sn")]
    assert engine.transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32)).text == ""


def test_the_fake_llm_echoes_at_its_rate_and_honours_a_prefix() -> None:
    engine = load_llm(Settings(_env_file=None, llm_engine="fake", fake_llm_tokens_per_s=100))
    assert isinstance(engine, FakeLlm)
    messages = [{"role": "system", "content": "x"}, {"role": "user", "content": "What is the time?"}]

    async def collect(prefix: str = "") -> list[str]:
        return [p async for p in engine.stream(messages, max_new_tokens=100, prefix=prefix)]

    started = time.perf_counter()
    pieces = asyncio.run(collect())
    elapsed = time.perf_counter() - started
    reply = "".join(pieces)
    assert reply == "You said What is the time. That is what I heard. Thank you for asking."
    assert elapsed >= len(pieces) / 100  # paced: never faster than the configured rate
    prefix = "You said What is"
    assert prefix + "".join(asyncio.run(collect(prefix))) == reply
    assert asyncio.run(collect()) == pieces  # deterministic


def test_the_fake_voice_is_real_audio_proportional_to_the_text() -> None:
    voice = load_tts(Settings(_env_file=None, tts_engine="fake", fake_tts_rtf=0.0))
    assert isinstance(voice, FakeTts)
    short = b"".join(voice.synthesize_stream("Hello there.", sample_rate=16000))
    long = b"".join(voice.synthesize_stream("Hello there. " * 4, sample_rate=16000))
    assert rms_dbfs(short) > -30.0  # a waveform, not silence
    assert len(short) == pytest.approx(len("Hello there.") * 0.06 * 32000, rel=0.05)
    assert len(long) == pytest.approx(len(("Hello there. " * 4).strip()) * 0.06 * 32000, rel=0.05)
    assert b"".join(voice.synthesize_stream("Hello there.", sample_rate=16000)) == short


def test_a_remote_engine_without_its_url_names_the_setting() -> None:
    for load, kind in ((asr_registry.load_engine, "ASR"), (load_llm, "LLM"), (load_tts, "TTS")):
        settings = Settings(_env_file=None, **{f"{kind.lower()}_engine": "openai"})
        with pytest.raises(ValueError, match=f"INZWA_{kind}_REMOTE_URL"):
            load(settings)  # type: ignore[operator]


def test_a_continued_reply_passes_through_and_a_restated_one_is_trimmed() -> None:
    from llm_worker.engines.openai import Restated

    def run(sent: str, pieces: list[str]) -> str:
        restated = Restated(sent)
        return "".join(restated.feed(piece) for piece in pieces)

    # vLLM / llama.cpp continue inside the partial message: nothing is held back
    assert run("The capital city", [" of", " France", " is", " Paris."]) == " of France is Paris."
    # a server that starts over repeats the sent text first: only what is new goes out
    assert run("The capital city", ["The", " capital", " city", " of", " France."]) == " of France."
    # a new message that only begins like the sent text is passed on whole
    assert run("The capital city", ["The", " cat", " sat."]) == "The cat sat."
    assert run("", ["Hello", " there."]) == "Hello there."


@pytest.mark.models
def test_the_voice_reports_the_device_it_really_runs_on(settings: Settings) -> None:
    """Asking for CUDA on an onnxruntime without it falls back to the CPU, and says so."""
    import onnxruntime

    voice = load_tts(Settings(_env_file=None, tts_device="cuda"))
    expected = "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
    assert voice.info()["device"] == expected
    assert any(b"".join(voice.synthesize_stream("Hello.", sample_rate=16000)))
