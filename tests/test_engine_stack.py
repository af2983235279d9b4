"""Engines swapped by settings alone, on the real five-process stack with real fixtures.

- Scripted fakes (`INZWA_*_ENGINE=fake`): no model files, READY at once, a whole voice turn with
  the real VAD; what the supervision and chaos tests can run on.
- Remote engines: the ASR toggled from the local Whisper to an OpenAI-compatible transcription
  server (the real Whisper behind OpenAI's route), the LLM on a real llama-cpp-python server;
  a full voice turn, a barge-in, and the LLM server killed mid-reply then back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from asr_worker.wer import normalize
from common.audio import SAMPLE_RATE, rms_dbfs
from common.languages import registry as languages
from common.models import resolve
from common.settings import Settings
from gateway.client import load_clip, talk
from tests.conftest import FAKE_TTS_MS_PER_CHAR
from tests.loopback import LOOPBACK
from tests.remote_servers import LlamaServer, SpeechServer
from tests.stack import Stack
from tests.test_turn_taking import Conversation, silence

pytestmark = pytest.mark.e2e

FAKE_TEXT = "what is the capital of zimbabwe"


def models_by_role(stack: Stack) -> dict[str, dict[str, object]]:
    body = LOOPBACK.get(f"{stack.http}/v1/models", timeout=10).json()
    return {model["role"]: model for model in body["models"]}


def test_fake_engines_run_a_whole_voice_turn(fake_stack: Stack, fixtures_dir: Path) -> None:
    """The session's fake stack (FAKE_ENGINES, started by settings alone; its own start used to
    be timed here: it is READY in seconds, with no model loaded)."""
    stack = fake_stack
    assert Settings(_env_file=None).fake_asr_text == FAKE_TEXT  # the script it speaks
    result = asyncio.run(talk(fixtures_dir / "q_en_weather.wav", stack.url, timeout_s=60))
    assert result.completed and result.errors == [], result.summary()
    assert result.transcript == FAKE_TEXT  # the real VAD opened and closed the turn
    echo = f"You said {FAKE_TEXT}. That is what I heard. Thank you for asking."
    assert result.reply_text.strip() == echo
    audio = bytes(result.reply_audio)
    # the fake voice's audio lasts FAKE_TTS_MS_PER_CHAR per character of each phrase: all of it
    phrases = [e["text"].strip() for e in result.events if e["type"] == "tts.phrase"]
    assert " ".join(phrases) == echo
    spoken_s = sum(len(text) for text in phrases) * FAKE_TTS_MS_PER_CHAR / 1000
    assert len(audio) / 2 / SAMPLE_RATE >= spoken_s - 0.04 * len(phrases) and rms_dbfs(audio) > -35.0
    assert {role: m["engine"] for role, m in models_by_role(stack).items()} == {
        "asr": "fake", "llm": "fake", "tts": "fake"}


@pytest.fixture(scope="module")
def remote_stack(
    settings: Settings, whisper_engine, piper_voice, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, LlamaServer, SpeechServer]]:
    llama = LlamaServer(resolve(settings.llm_model, settings.models_dir),
                        tmp_path_factory.mktemp("llama") / "server.log")
    speech = SpeechServer(whisper_engine, piper_voice)
    llama.start()
    speech.start()
    stack = Stack(tmp_path_factory.mktemp("remote"), INZWA_ASR_ENGINE="openai",
                  INZWA_ASR_REMOTE_URL=speech.url, INZWA_LLM_ENGINE="openai",
                  INZWA_LLM_REMOTE_URL=llama.url, INZWA_LLM_REMOTE_RETRIES="1",
                  INZWA_LLM_MAX_NEW_TOKENS="48", INZWA_RATE_REQUESTS_PER_MINUTE="0",
                  INZWA_RATE_CONCURRENT_SESSIONS="0")
    try:
        stack.start()
        yield stack, llama, speech
    finally:
        stack.stop()
        speech.stop()
        llama.stop()


def test_a_voice_turn_through_remote_asr_and_llm(remote_stack: tuple[Stack, LlamaServer, SpeechServer],
                                                 fixtures_dir: Path) -> None:
    stack, _, speech = remote_stack
    before = len([r for r in speech.requests if r["route"] == "transcriptions"])
    result = asyncio.run(talk(fixtures_dir / "q_en_capital.wav", stack.url, timeout_s=90))
    assert result.completed and result.errors == [], result.summary()
    heard = normalize(result.transcript)
    assert "capital" in heard and "zimbabwe" in heard
    assert result.partials == []  # the remote ASR mode: finals only
    assert len([r for r in speech.requests if r["route"] == "transcriptions"]) > before
    assert result.reply_text.strip()
    audio = bytes(result.reply_audio)
    assert len(audio) / 2 / SAMPLE_RATE > 0.5 and rms_dbfs(audio) > -35.0
    roles = models_by_role(stack)
    assert (roles["asr"]["engine"], roles["llm"]["engine"], roles["tts"]["engine"]) == (
        "openai", "openai", "piper-onnx")


def test_barge_in_through_the_remote_llm(remote_stack: tuple[Stack, LlamaServer, SpeechServer],
                                         fixtures_dir: Path) -> None:
    stack, _, _ = remote_stack

    async def run() -> Conversation:
        async with websockets.connect(stack.url) as ws:
            conversation = Conversation(ws)
            await conversation.start()
            await conversation.stream(load_clip(fixtures_dir / "q_en_long.wav") + silence(300))
            await conversation.wait_for(lambda: conversation.audio_bytes() > 1.0 * 32000, 90)
            await conversation.stream(load_clip(fixtures_dir / "q_en_weather.wav"))
            await conversation.wait_for(lambda: len(conversation.events("tts.end")) >= 1, 90)
            return conversation

    conversation = asyncio.run(run())
    cancels = conversation.events("tts.cancel")
    assert len(cancels) == 1
    assert conversation.events("tts.end")[0]["turn_id"] != cancels[0]["turn_id"]
    assert "tomorrow" in normalize(conversation.events("asr.final")[-1]["text"])


def test_the_llm_server_killed_mid_reply_then_back(remote_stack: tuple[Stack, LlamaServer, SpeechServer],
                                                   fixtures_dir: Path) -> None:
    stack, llama, _ = remote_stack

    async def run() -> Conversation:
        async with websockets.connect(stack.url) as ws:
            conversation = Conversation(ws)
            await conversation.start()
            await conversation.stream(load_clip(fixtures_dir / "q_en_long.wav") + silence(300))
            await conversation.wait_for(lambda: len(conversation.events("llm.partial")) >= 2, 90)
            await asyncio.to_thread(llama.kill)
            await conversation.wait_for(lambda: conversation.events("error"), 60)
            await conversation.wait_for(lambda: conversation.events("tts.end"), 60)
            await asyncio.to_thread(llama.start)
            return conversation

    conversation = asyncio.run(run())
    assert [e["code"] for e in conversation.events("error")] == ["llm_failed"]  # said, not hung
    apology = languages.get("en").fallback("unavailable")  # then the person still hears an answer
    assert conversation.events("tts.end")[0]["text"].endswith(apology)
    result = asyncio.run(talk(fixtures_dir / "q_en_capital.wav", stack.url, timeout_s=90))
    assert result.completed and result.errors == [], result.summary()  # recovered
    assert result.reply_text.strip()
