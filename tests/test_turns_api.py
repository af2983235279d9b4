"""`POST /v1/turns`, one whole turn per request, end to end on the fake stack (real processes,
scripted engines: the fake ASR hears INZWA_FAKE_ASR_TEXT in any speech, the fake LLM echoes).

Streamed and JSON answers, audio (WAV, WebM/Opus, MP3) and text in, a conversation continued by
`session_id`, and clear 4xx for what cannot be a turn.
"""

from __future__ import annotations

import base64
import io
import uuid
import wave
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from common.audio import read_wav
from common.settings import Settings
from tests.loopback import LOOPBACK
from tests.stack import Stack
from tests.test_openai_rest import transcode

pytestmark = pytest.mark.e2e

CLIP = "q_en_capital.wav"
TIMEOUT = httpx.Timeout(60.0)
# The operations of gateway/turns_api.py, fuzzed here on the fake stack (a real turn per valid
# case would be slow on the real models); tests/test_api.py checks every live one is fuzzed.
TURNS_FUZZED = [("POST", "/v1/turns"), ("POST", "/api/v1/interaction/start"),
                ("GET", "/api/v1/interaction/result/{job_id}"), ("GET", "/api/v1/health"),
                ("GET", "/api/v1/metrics")]


def heard() -> str:
    """What the fake ASR hears in any speech (the stack's default setting)."""
    return Settings.model_fields["fake_asr_text"].default


def wav_samples(data: bytes) -> np.ndarray:
    """The samples of a WAV body (streamed ones say 'unknown length': read to the end)."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", data[:16]
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, 16000)
    return np.frombuffer(data[44:], dtype="<i2")


def audible(samples: np.ndarray) -> bool:
    return len(samples) > 1600 and float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) > 100


def streamed_turn(stack: Stack, **request: Any) -> tuple[httpx.Response, bytes]:
    with httpx.Client(timeout=TIMEOUT) as client, \
            client.stream("POST", f"{stack.http}/v1/turns", **request) as response:
        return response, response.read()


def test_a_typed_turn_streams_its_spoken_answer_and_continues(fake_stack: Stack) -> None:
    response, body = streamed_turn(fake_stack, json={"text": "Hello there."})
    assert response.status_code == 200, body[:300]
    assert response.headers["content-type"] == "audio/wav"
    assert unquote(response.headers["x-transcript"]) == "Hello there."
    assert audible(wav_samples(body))
    session_id = response.headers["x-session-id"]
    result = LOOPBACK.get(f"{fake_stack.http}/api/v1/interaction/result/{response.headers['x-job-id']}",
                       params={"format": "json"}, timeout=TIMEOUT).json()
    assert result["status"] == "done" and "You said Hello there" in result["reply_text"], result
    assert result["audio_bytes"] == len(body) - 44  # every sample of the turn was streamed
    again, body2 = streamed_turn(fake_stack, json={"text": "And again.", "session_id": session_id})
    assert again.status_code == 200 and again.headers["x-session-id"] == session_id
    assert audible(wav_samples(body2))
    stored = LOOPBACK.get(f"{fake_stack.http}/v1/sessions/{session_id}", timeout=TIMEOUT).json()
    users = [m["content"] for m in stored["history"] if m["role"] == "user"]
    assert users == ["Hello there.", "And again."], stored["history"]


def test_an_audio_turn_answers_as_json_with_base64_audio(fake_stack: Stack, fixtures_dir: Path) -> None:
    wav = (fixtures_dir / CLIP).read_bytes()
    response = LOOPBACK.post(f"{fake_stack.http}/v1/turns", content=wav, timeout=TIMEOUT,
                          headers={"Content-Type": "audio/wav", "Accept": "application/json"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "done" and body["transcript"] == heard(), body
    assert heard() in body["reply_text"].lower() and body["tokens"] > 0
    samples = wav_samples(base64.b64decode(body["audio"]))
    assert audible(samples) and len(samples) * 2 == body["audio_bytes"]
    stages = [body["timings_ms"][k] for k in ("asr_final", "first_token", "first_audio", "total")]
    assert stages == sorted(stages) and stages[0] > 0, body["timings_ms"]
    stored = LOOPBACK.get(f"{fake_stack.http}/v1/sessions/{body['session_id']}", timeout=TIMEOUT).json()
    user = [m for m in stored["messages"] if m["role"] == "user"]
    assert isinstance(body["confidence"], float)  # the ASR's, stored with the turn:
    assert [m["confidence"] for m in user] == [body["confidence"]], stored["messages"]


@pytest.mark.parametrize(("kind", "codec", "media"), [("webm", "libopus", "audio/webm"),
                                                       ("ogg", "libopus", "audio/ogg"),
                                                       ("mp3", "libmp3lame", "audio/mpeg")])
def test_compressed_uploads_are_decoded_and_answered_in_ogg_opus(fake_stack: Stack, fixtures_dir: Path,
                                                                 kind: str, codec: str, media: str) -> None:
    pcm, rate = read_wav(fixtures_dir / CLIP)
    response, body = streamed_turn(fake_stack, content=transcode(pcm, rate, kind, codec),
                                   params={"audio_format": "opus"}, headers={"Content-Type": media})
    assert response.status_code == 200, body[:300]
    assert response.headers["content-type"] == "audio/ogg" and body[:4] == b"OggS"
    assert unquote(response.headers["x-transcript"]) == heard()
    assert len(body) > 2000  # headers and pages of real audio, not an empty stream


@pytest.mark.parametrize(("request_args", "status", "code"), [
    ({"content": b"not audio at all" * 20, "headers": {"Content-Type": "audio/wav"}}, 415,
     "unsupported_audio"),
    ({"content": b"", "headers": {"Content-Type": "audio/wav"}}, 422, "empty_audio"),
    ({"json": {"text": "   "}}, 422, "empty_text"),
    ({"json": {"text": "hi", "session_id": "not-a-uuid"}}, 422, "bad_session_id"),
    ({"json": {"text": "hi", "language": "xx"}}, 422, "unsupported_language"),
    ({"json": {"text": "hi", "extra": 1}}, 422, "invalid_request"),
    ({"json": {"text": "x" * 5000}}, 422, "text_too_long"),
])
def test_what_cannot_be_a_turn_gets_a_clear_4xx(fake_stack: Stack, request_args: dict[str, Any],
                                                status: int, code: str) -> None:
    response = LOOPBACK.post(f"{fake_stack.http}/v1/turns", timeout=TIMEOUT, **request_args)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code


def test_the_safety_filter_answers_a_whole_turn_too(fake_stack: Stack) -> None:
    response = LOOPBACK.post(f"{fake_stack.http}/v1/turns", json={"text": "How do I make a bomb?"},
                          params={"format": "json"}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reply_text"] == "Sorry, I cannot help with that."  # the pack's refusal, spoken
    assert audible(wav_samples(base64.b64decode(body["audio"])))


def test_a_silent_upload_is_no_speech_not_a_reply(fake_stack: Stack) -> None:
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(16000)
        writer.writeframes(bytes(32000))
    response = LOOPBACK.post(f"{fake_stack.http}/v1/turns", content=out.getvalue(), timeout=TIMEOUT,
                          headers={"Content-Type": "audio/wav", "Accept": "application/json"},
                          params={"session_id": str(uuid.uuid4())})
    assert response.status_code == 422 and response.json()["error"] == "no_speech", response.text


@pytest.fixture(scope="module")
def turns_schema(fake_stack: Stack) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fake_stack.http}/openapi.json", wait_for_schema=30)


@pytest.mark.parametrize(("method", "path"), TURNS_FUZZED, ids=[f"{m} {p}" for m, p in TURNS_FUZZED])
def test_no_turn_request_gets_a_server_error(turns_schema: schemathesis.BaseSchema, fake_stack: Stack,
                                             method: str, path: str) -> None:
    """Valid and invalid requests generated from the schema: 2xx or 4xx, never a 5xx."""
    operation = turns_schema[path][method]
    strategy = operation.as_strategy(GenerationMode.POSITIVE)
    if operation.body or operation.query:
        strategy = strategy | operation.as_strategy(GenerationMode.NEGATIVE)
    headers = fake_stack.admin_headers() if path == "/api/v1/metrics" else None
    statuses: list[int] = []

    @given(case=strategy)
    @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target])
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(checks=[not_a_server_error], timeout=60, headers=headers)
        statuses.append(response.status_code)

    run()
    assert statuses and all(status < 500 for status in statuses), statuses
