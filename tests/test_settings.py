"""Settings come from INZWA_* variables; endpoints derive from one base port."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.settings import Settings


def test_defaults_bind_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("INZWA_HOST", "INZWA_PORT", "INZWA_ZMQ_BASE_PORT"):
        monkeypatch.delenv(key, raising=False)
    settings = Settings(_env_file=None, run_dir=Path("/srv/inzwa/run"))
    assert settings.host == "127.0.0.1" and settings.port == 8000
    # the plane defaults to ipc sockets in the run directory (only its user can open them)
    assert settings.ingress == "ipc:///srv/inzwa/run/plane/ingress.sock"
    assert settings.egress == "ipc:///srv/inzwa/run/plane/egress-gw0.sock"
    assert settings.work_endpoint("tts", 1) == "ipc:///srv/inzwa/run/plane/tts-1.sock"
    tcp = Settings(_env_file=None, zmq_transport="tcp")
    assert tcp.ingress == "tcp://127.0.0.1:5550"
    assert tcp.results == "tcp://127.0.0.1:5552"
    assert tcp.work_endpoint("tts", 1) == "tcp://127.0.0.1:5581"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INZWA_PORT", "9001")
    monkeypatch.setenv("INZWA_ZMQ_BASE_PORT", "31000")
    monkeypatch.setenv("INZWA_ZMQ_TRANSPORT", "tcp")
    monkeypatch.setenv("INZWA_LLM_WORK_ENDPOINT", "tcp://10.0.0.5:7000")
    monkeypatch.setenv("INZWA_CORS_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("INZWA_MAX_AUDIO_SECONDS", "12.5")
    settings = Settings(_env_file=None)
    assert settings.port == 9001
    assert settings.control == "tcp://127.0.0.1:31001"
    assert settings.work_endpoint("llm", 2) == "tcp://10.0.0.5:7002"
    assert settings.cors_allowed_origins == ["https://a.example", "https://b.example"]
    assert settings.max_audio_seconds == 12.5


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INZWA_VAD_AGGRESSIVENESS", "7")
    with pytest.raises(ValueError, match="vad_aggressiveness"):
        Settings(_env_file=None)


def test_asr_language_follows_the_session_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INZWA_LANGUAGE", "sn")
    assert Settings(_env_file=None).effective_asr_language == "sn"
    monkeypatch.setenv("INZWA_ASR_LANGUAGE", "auto")
    assert Settings(_env_file=None).effective_asr_language == "auto"
