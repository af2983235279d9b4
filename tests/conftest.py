"""Shared fixtures: paths, settings, and real models loaded once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    path = Path(os.environ.get("INZWA_FIXTURES_DIR", ROOT.parent / "shared" / "fixtures" / "speech"))
    if not path.is_dir():
        pytest.fail(f"speech fixtures not found at {path} (set INZWA_FIXTURES_DIR)")
    return path


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def whisper_engine(settings: Settings):
    """The real Whisper engine, loaded once for every test that needs it."""
    from asr_worker.engine import WhisperEngine
    from common.models import resolve

    path = resolve(settings.asr_model, settings.models_dir)
    return WhisperEngine.load(path, compute_type=settings.asr_compute_type, threads=settings.asr_threads)


@pytest.fixture(scope="session")
def piper_voice(settings: Settings):
    """The real Piper VITS voice, loaded once for every test that needs it."""
    from common.models import resolve
    from tts_worker.engine import PiperVoice

    return PiperVoice.load(resolve(settings.tts_model, settings.models_dir), threads=settings.tts_threads)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """The real five-process stack under supervisord, on free loopback ports, once per session."""
    from tests.stack import Stack

    # The chaos test kills workers far more often than real failures would: give the shared
    # stack a restart budget to match (the default budget is tested on a stack of its own).
    # Replies of at most 48 tokens (~10 s of speech) keep the suite quick; paced playback
    # otherwise makes every test that waits for tts.end wait for the whole answer.
    # Every test talks from 127.0.0.1 as one anonymous caller: the shared stack's rate limits
    # are lifted (they are tested on gateways of their own in test_api_auth.py).
    running = Stack(tmp_path_factory.mktemp("stack"), INZWA_RESTART_BUDGET="40",
                    INZWA_LLM_MAX_NEW_TOKENS="48", INZWA_RATE_REQUESTS_PER_MINUTE="0",
                    INZWA_RATE_CONCURRENT_SESSIONS="0",
                    INZWA_ENABLE_WEBRTC="true")  # the browser and WebRTC tests use /rtc/session
    try:
        running.start()
        yield running
    finally:
        running.stop()


FAKE_ENGINES = {"INZWA_ASR_ENGINE": "fake", "INZWA_LLM_ENGINE": "fake", "INZWA_TTS_ENGINE": "fake"}
FAKE_TTS_MS_PER_CHAR = 25  # short replies: playback is paced at real time


@pytest.fixture(scope="session")
def fake_stack(tmp_path_factory: pytest.TempPathFactory):
    """The real five processes, supervisor and watchdog, with the scripted fake engines: for
    supervision and chaos tests, where what is under test is recovery, not the models. Fakes load
    at once, so a killed worker is back in about a second instead of a model reload."""
    from tests.stack import Stack

    running = Stack(tmp_path_factory.mktemp("fake-stack"), **FAKE_ENGINES, INZWA_RESTART_BUDGET="60",
                    INZWA_FAKE_TTS_MS_PER_CHAR=str(FAKE_TTS_MS_PER_CHAR),
                    INZWA_PLAYBACK_SPEED="4",  # replies are paced out 4x as fast as they play
                    INZWA_RATE_REQUESTS_PER_MINUTE="0", INZWA_RATE_CONCURRENT_SESSIONS="0")
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def deterministic_stack(tmp_path_factory: pytest.TempPathFactory):
    """fake_stack's real processes and fake engines, with the LLM at temperature 0 (so the
    response cache is on) and a 2 s orchestrator idle timeout: for the idle GC and response
    cache tests (tests/test_idle_gc.py, tests/test_response_cache.py), which must not change
    the shared fake_stack's behaviour."""
    from tests.stack import Stack

    running = Stack(tmp_path_factory.mktemp("deterministic-stack"), **FAKE_ENGINES,
                    INZWA_FAKE_TTS_MS_PER_CHAR=str(FAKE_TTS_MS_PER_CHAR), INZWA_PLAYBACK_SPEED="4",
                    INZWA_LLM_TEMPERATURE="0", INZWA_SESSION_IDLE_S="2",
                    INZWA_RATE_REQUESTS_PER_MINUTE="0", INZWA_RATE_CONCURRENT_SESSIONS="0")
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def llm_engine(settings: Settings):
    """The real GGUF model through llama-cpp-python, loaded once."""
    from common.models import resolve
    from llm_worker.engine import LlamaCppEngine

    return LlamaCppEngine.load(resolve(settings.llm_model, settings.models_dir),
                               threads=settings.llm_threads, temperature=0.0)
