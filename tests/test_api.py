"""The gateway's REST API and the Opus WebSocket, against the real five-process stack.

Chat (JSON and SSE), speech (WAV and Ogg/Opus, streamed), transcription (WAV and raw PCM16),
models and warm-up, probes and request ids, a voice turn over Opus, and bounded fuzzing that must
never get a 5xx: Schemathesis over the gateway's own OpenAPI document, Hypothesis over uploads.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
import schemathesis
import websockets
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from asr_worker.wer import normalize
from common.audio import SAMPLE_RATE, rms_dbfs
from common.audio import read_wav as read_wav_file
from common.models import CATALOGUE, model_info
from common.settings import Settings
from gateway.client import load_clip
from gateway.codec import OpusEncoder
from gateway.uploads import UPLOAD_RATES
from tests.stack import Stack

pytestmark = pytest.mark.e2e

TIMEOUT = httpx.Timeout(90.0, connect=10.0)
WAV_HEADER_BYTES = 44
OPUS_RATE = 48000
# A short first sentence and longer ones after it: a streamed body starts with the first.
SPEECH_TEXT = (
    "Good morning. The weather in Harare today is sunny and warm, with a light breeze from the east. "
    "In the afternoon a few clouds may build up over the hills, but no rain is expected. "
    "Tonight the sky stays clear and the temperature drops to about twelve degrees."
)
SILENCE_DBFS = -35.0


def assert_request_id(response: httpx.Response) -> None:
    request_id = response.headers.get("x-request-id", "")
    assert request_id and len(request_id) <= 64, response.headers


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and isinstance(body["message"], str) and body["message"], body
    assert_request_id(response)


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.http, timeout=TIMEOUT) as http:
        yield http


@pytest.fixture(scope="module")
def fake_client(fake_stack: Stack) -> Iterator[httpx.Client]:
    """The same gateway, orchestrator and workers with scripted engines: for the fuzzers of
    model-bound routes, whose parsing, validation and error paths are all ours and the same on
    every engine, while a real model would spend seconds of CPU on each generated input (and a
    fuzzed chat could leave the shared real stack's LLM busy for the tests after it)."""
    with httpx.Client(base_url=fake_stack.http, timeout=TIMEOUT) as http:
        yield http


# --- chat ------------------------------------------------------------------------------------------


def test_chat_returns_an_assistant_message(client: httpx.Client) -> None:
    response = client.post("/v1/chat", json={
        "messages": [{"role": "user", "content": "What is the capital city of Zimbabwe?"}],
        "max_tokens": 24,
    })
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert_request_id(response)
    body = response.json()
    assert body["id"] and body["language"] == "en"
    assert body["message"]["role"] == "assistant"
    assert body["message"]["content"].strip()
    assert 1 <= body["tokens"] <= 24


@dataclass
class SseEvent:
    name: str
    data: dict[str, Any]
    at: float  # seconds since the request was sent
    read: int  # index of the network read that completed the event


@dataclass
class ChatStream:
    status: int
    headers: httpx.Headers
    events: list[SseEvent] = field(default_factory=list)
    reads: int = 0


def parse_sse(block: bytes) -> tuple[str, dict[str, Any]]:
    name, data = "message", ""
    for line in block.decode().splitlines():
        if line.startswith("event:"):
            name = line[len("event:"):].strip()
        elif line.startswith("data:"):
            data += line[len("data:"):].strip()
    return name, json.loads(data)


@pytest.fixture(scope="module")
def chat_stream(client: httpx.Client) -> ChatStream:
    """One streamed chat, each SSE event stamped with when (and in which read) it arrived."""
    request = {"messages": [{"role": "user", "content": "Tell me a short story about a lion and a hare."}],
               "stream": True, "max_tokens": 32}
    started = time.monotonic()
    with client.stream("POST", "/v1/chat", json=request) as response:
        result = ChatStream(response.status_code, response.headers)
        if response.status_code != 200:
            response.read()
            pytest.fail(f"streamed chat answered {response.status_code}: {response.text}")
        pending = b""
        for chunk in response.iter_raw():
            result.reads += 1
            pending += chunk
            while b"\n\n" in pending:
                block, pending = pending.split(b"\n\n", 1)
                name, data = parse_sse(block)
                result.events.append(SseEvent(name, data, time.monotonic() - started, result.reads))
        assert pending.strip() == b"", pending
    return result


def test_chat_stream_is_a_text_event_stream(chat_stream: ChatStream) -> None:
    assert chat_stream.status == 200
    assert chat_stream.headers["content-type"].startswith("text/event-stream")
    assert chat_stream.headers.get("cache-control") == "no-cache"
    assert chat_stream.headers.get("x-request-id")
    names = [event.name for event in chat_stream.events]
    assert names.count("done") == 1 and names[-1] == "done", names
    assert set(names) == {"token", "done"}, names


def test_chat_stream_tokens_arrive_one_by_one(chat_stream: ChatStream) -> None:
    tokens = [event for event in chat_stream.events if event.name == "token"]
    done = chat_stream.events[-1]
    assert len(tokens) >= 5, chat_stream.events
    # Sent as they are generated: over several network reads and a measurable time, the first
    # token well before the end of the reply.
    assert len({event.read for event in tokens}) >= 3, [(e.read, e.at) for e in tokens]
    assert len({round(event.at, 3) for event in tokens}) >= 3
    assert done.at - tokens[0].at > 0.1, (tokens[0].at, done.at)
    assert tokens[0].read < done.read
    assert [event.at for event in chat_stream.events] == sorted(event.at for event in chat_stream.events)


def test_chat_stream_done_carries_the_whole_text(chat_stream: ChatStream) -> None:
    tokens = [event.data for event in chat_stream.events if event.name == "token"]
    assert [token["seq"] for token in tokens] == list(range(len(tokens)))
    assert all(isinstance(token["token"], str) and token["token"] for token in tokens)
    done = chat_stream.events[-1].data
    assert done["id"]
    assert done["text"] == "".join(token["token"] for token in tokens).strip()
    assert done["text"]


def test_chat_rejects_invalid_requests(client: httpx.Client) -> None:
    assert_error(client.post("/v1/chat", json={"messages": []}), 422, "invalid_request")
    assert_error(client.post("/v1/chat", json={"messages": [{"role": "user", "content": "hi"}],
                                               "language": "tlh"}), 422, "unsupported_language")


# --- speech ----------------------------------------------------------------------------------------


@dataclass
class SpeechBody:
    status: int
    headers: httpx.Headers
    data: bytes
    first_audio_s: float  # when the first audio bytes (past a WAV header) arrived
    total_s: float  # when the body ended


def speak(client: httpx.Client, request: dict[str, Any], header_bytes: int) -> SpeechBody:
    started = time.monotonic()
    first_audio = None
    data = bytearray()
    with client.stream("POST", "/v1/tts", json=request) as response:
        for chunk in response.iter_raw():
            data.extend(chunk)
            if first_audio is None and len(data) > header_bytes:
                first_audio = time.monotonic() - started
        total = time.monotonic() - started
        assert response.status_code == 200, bytes(data)
        assert first_audio is not None, "the body has no audio"
        return SpeechBody(response.status_code, response.headers, bytes(data), first_audio, total)


def decode_audio(data: bytes) -> tuple[str, int, np.ndarray]:
    """(codec name, sample rate, mono int16 samples) of a whole file, decoded with PyAV."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        codec, rate = stream.codec_context.name, stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        chunks = [out.to_ndarray().reshape(-1) for frame in container.decode(stream)
                  for out in resampler.resample(frame)]
    return codec, rate, np.concatenate(chunks).astype(np.int16)


@pytest.fixture(scope="module")
def wav_speech(client: httpx.Client) -> SpeechBody:
    return speak(client, {"text": SPEECH_TEXT, "format": "wav"}, WAV_HEADER_BYTES)


@pytest.fixture(scope="module")
def opus_speech(client: httpx.Client) -> SpeechBody:
    return speak(client, {"text": SPEECH_TEXT, "format": "opus"}, 0)


def test_tts_wav_streams_while_synthesis_goes_on(wav_speech: SpeechBody) -> None:
    assert wav_speech.headers["content-type"] == "audio/wav"
    assert wav_speech.headers.get("x-request-id")
    # The first sentence is heard long before the last one is synthesized.
    assert wav_speech.first_audio_s < 0.5 * wav_speech.total_s, (wav_speech.first_audio_s,
                                                                  wav_speech.total_s)


def test_tts_wav_is_pcm16_mono_16khz_speech(wav_speech: SpeechBody) -> None:
    data = wav_speech.data
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
    assert data[4:8] == b"\xff\xff\xff\xff" and data[40:44] == b"\xff\xff\xff\xff"  # size unknown
    assert (len(data) - WAV_HEADER_BYTES) % 2 == 0
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "pcm_s16le"
        assert stream.codec_context.sample_rate == SAMPLE_RATE
        assert stream.codec_context.channels == 1
        samples = np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(stream)])
    assert samples.size == (len(data) - WAV_HEADER_BYTES) // 2  # every byte after the header is audio
    assert samples.size / SAMPLE_RATE > 2.0
    assert rms_dbfs(samples.astype("<i2").tobytes()) > SILENCE_DBFS


def test_tts_opus_is_ogg_opus_at_48khz(opus_speech: SpeechBody, wav_speech: SpeechBody) -> None:
    assert opus_speech.headers["content-type"] == "audio/ogg"
    assert opus_speech.data[:4] == b"OggS" and b"OpusHead" in opus_speech.data[:100]
    codec, rate, samples = decode_audio(opus_speech.data)
    assert (codec, rate) == ("opus", OPUS_RATE)
    opus_s = samples.size / OPUS_RATE
    wav_s = (len(wav_speech.data) - WAV_HEADER_BYTES) / 2 / SAMPLE_RATE
    assert abs(opus_s - wav_s) <= 0.2 * wav_s, (opus_s, wav_s)
    assert rms_dbfs(samples.astype("<i2").tobytes()) > SILENCE_DBFS
    assert opus_speech.first_audio_s < opus_speech.total_s


def test_tts_rejects_invalid_requests(client: httpx.Client) -> None:
    assert_error(client.post("/v1/tts", json={"text": "Hello.", "format": "mp3"}), 422, "invalid_request")
    assert_error(client.post("/v1/tts", json={"text": "Hello.", "voice": "nobody"}), 422, "unknown_voice")
    assert_error(client.post("/v1/tts", json={"text": "   "}), 422, "empty_text")
    lone_surrogate = b'{"text": "hello \\ud800"}'  # valid JSON, but no UTF-8 text can carry it
    assert_error(client.post("/v1/tts", content=lone_surrogate, headers={"content-type": "application/json"}),
                 422, "invalid_request")


@pytest.mark.parametrize("stream", ["false", "true"])
def test_a_lone_surrogate_in_a_chat_message_is_a_client_error(client: httpx.Client, stream: str) -> None:
    body = f'{{"messages": [{{"role": "user", "content": "hi \\ud800"}}], "stream": {stream}}}'
    response = client.post("/v1/chat", content=body.encode(), headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_request")


@pytest.mark.parametrize("text", [".", "...!?", "\u200b"])
def test_a_text_with_nothing_to_say_is_a_client_error(client: httpx.Client, text: str) -> None:
    assert_error(client.post("/v1/tts", json={"text": text}), 422, "nothing_to_say")


# --- transcription ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capital_wav(fixtures_dir: Path) -> Path:
    return fixtures_dir / "q_en_capital.wav"


def check_transcript(body: dict[str, Any], clip_ms: float) -> set[str]:
    words = set(normalize(body["text"]).split())
    assert {"capital", "zimbabwe"} <= words, body
    assert body["language"] == "en"
    assert 0.0 < body["language_probability"] <= 1.0
    assert 0.0 < body["confidence"] <= 1.0
    assert abs(body["duration_ms"] - clip_ms) <= 100, (body["duration_ms"], clip_ms)
    assert body["segments"], body
    for segment in body["segments"]:
        assert 0 <= segment["start_ms"] < segment["end_ms"] <= body["duration_ms"] + 1000, segment
        assert 0.0 <= segment["confidence"] <= 1.0
    assert " ".join(s["text"].strip() for s in body["segments"]).strip() == body["text"].strip()
    return words


def test_asr_transcribes_a_wav_upload_and_the_same_raw_pcm(client: httpx.Client, capital_wav: Path) -> None:
    pcm, rate = read_wav_file(capital_wav)
    clip_ms = len(pcm) / 2 / rate * 1000
    wav = client.post("/v1/asr", content=capital_wav.read_bytes(), headers={"content-type": "audio/wav"})
    assert wav.status_code == 200, wav.text
    assert_request_id(wav)
    from_wav = check_transcript(wav.json(), clip_ms)
    raw = client.post("/v1/asr", params={"sample_rate": rate, "language": "en"}, content=pcm,
                      headers={"content-type": "application/octet-stream"})
    assert raw.status_code == 200, raw.text
    from_raw = check_transcript(raw.json(), clip_ms)
    assert from_raw == from_wav


WAV_MUTATIONS: dict[str, st.SearchStrategy[Any]] = {  # header fields a broken or unusual WAV may have
    "tag": st.sampled_from([3, 0xFFFE, 0x55, 0]),
    "channels": st.sampled_from([0, 2, 3]) | st.integers(0, 0xFFFF),
    "rate": st.sampled_from([0, 1, 7999, 12000, 96000]) | st.integers(0, 2**32 - 1),
    "bits": st.sampled_from([0, 8, 24, 32]),
    "fmt_size": st.sampled_from([0, 8, 15, 17, 0xFFFFFFFF]),
    "data_size": st.sampled_from([0, 1, 3, 0xFFFFFFFF]) | st.integers(0, 2**32 - 1),
    "riff_size": st.sampled_from([0, 4, 0xFFFFFFFF]),
    "layout": st.sampled_from(["list_first", "list_between", "data_first", "no_fmt", "no_data"]),
}


@st.composite
def uploads(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    """Query and body of an upload: raw PCM16, or a WAV that may have a field or two wrong."""
    language = draw(st.sampled_from(["", "en", "sn"]))
    params: dict[str, Any] = {"language": language} if language else {}
    rate = draw(st.sampled_from(UPLOAD_RATES))
    samples = draw(st.sampled_from([rate // 5, rate // 2, rate]) | st.integers(0, rate))
    amplitude = draw(st.sampled_from([0, 300, 32767]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    audio = rng.integers(-amplitude, amplitude + 1, samples).astype("<i2").tobytes()
    if draw(st.booleans()):  # raw PCM16, perhaps at an odd rate or cut mid-sample
        params["sample_rate"] = rate if draw(st.booleans()) else draw(st.integers(8000, 48000))
        return params, audio[: draw(st.integers(0, len(audio)))] if draw(st.booleans()) else audio
    wrong = draw(st.lists(st.sampled_from(sorted(WAV_MUTATIONS)), max_size=2, unique=True))
    field = {"tag": 1, "channels": 1, "rate": rate, "bits": 16, "layout": ""}
    field.update({name: draw(WAV_MUTATIONS[name]) for name in wrong})
    block = field["channels"] * field["bits"] // 8
    fmt = struct.pack("<HHIIHH", field["tag"], field["channels"], field["rate"],
                      (field["rate"] * block) & 0xFFFFFFFF, block & 0xFFFF, field["bits"])
    if field["tag"] == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: the real format is in the SubFormat GUID
        fmt += struct.pack("<HHIH", 22, field["bits"], 0, draw(st.sampled_from([1, 3]))) + bytes(14)
    fmt_chunk = b"fmt " + struct.pack("<I", field.get("fmt_size", len(fmt))) + fmt
    data_chunk = b"data" + struct.pack("<I", field.get("data_size", len(audio))) + audio
    odd_chunk = b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # odd-sized, so padded
    chunks = {"": [fmt_chunk, data_chunk], "list_first": [odd_chunk, fmt_chunk, data_chunk],
              "list_between": [fmt_chunk, odd_chunk, data_chunk], "data_first": [data_chunk, fmt_chunk],
              "no_fmt": [data_chunk], "no_data": [fmt_chunk, odd_chunk]}[field["layout"]]
    riff = b"WAVE" + b"".join(chunks)
    return params, b"RIFF" + struct.pack("<I", field.get("riff_size", len(riff))) + riff


@given(upload=uploads())
@settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_upload_gets_a_server_error(fake_client: httpx.Client,
                                       upload: tuple[dict[str, Any], bytes]) -> None:
    """Whatever WAV header or raw PCM arrives: a transcript, or a 4xx that says why. (The real
    engine's share, odd audio that passes the checks, is test_odd_audio_reaches_the_real_engine.)"""
    params, body = upload
    response = fake_client.post("/v1/asr", params=params, content=body,
                                headers={"content-type": "application/octet-stream"})
    assert response.status_code in (200, 413, 415, 422), (response.status_code, response.text)
    result = response.json()
    if response.status_code == 200:
        assert isinstance(result["text"], str) and result["duration_ms"] >= 100, result
        if params.get("language"):  # a language the caller names is the one transcribed
            assert result["language"] == params["language"], result
    else:
        assert result["error"] and result["message"], result


@pytest.mark.parametrize(("rate", "seconds", "amplitude"), [
    (8000, 0.1, 32767),  # the shortest accepted, full-scale noise, upsampled
    (48000, 1.0, 32767),  # a second of full-scale noise, downsampled
    (22050, 0.5, 300),  # quiet noise at an odd rate
    (16000, 1.0, 0),  # digital silence
])
def test_odd_audio_reaches_the_real_engine(client: httpx.Client, rate: int, seconds: float,
                                            amplitude: int) -> None:
    """What the upload fuzzer generates that passes every check, through the real Whisper."""
    audio = np.random.default_rng(rate).integers(-amplitude, amplitude + 1, int(rate * seconds))
    response = client.post("/v1/asr", params={"sample_rate": rate, "language": "en"},
                           content=audio.astype("<i2").tobytes())
    assert response.status_code == 200, response.text
    result = response.json()
    assert isinstance(result["text"], str) and result["language"] == "en", result
    assert abs(result["duration_ms"] - seconds * 1000) <= 1, result


def test_asr_rejects_what_is_not_usable_audio(client: httpx.Client) -> None:
    assert_error(client.post("/v1/asr", content=b"this is not a wav file"), 415, "unsupported_audio")
    assert_error(client.post("/v1/asr", content=b""), 422, "empty_audio")
    assert_error(client.post("/v1/asr", params={"sample_rate": 16000}, content=b"\x00\x00" * 100),
                 422, "audio_too_short")
    assert_error(client.post("/v1/asr", params={"sample_rate": 12345}, content=b"\x00\x00" * 16000),
                 422, "unsupported_sample_rate")


# --- models and warm-up ----------------------------------------------------------------------------


def expected_models(settings: Settings) -> dict[str, dict[str, str]]:
    expected = {}
    for role, name in (("asr", settings.asr_model), ("llm", settings.llm_model), ("tts", settings.tts_model)):
        assert name in CATALOGUE and CATALOGUE[name].role == role, (role, name)
        expected[role] = model_info(name, settings.models_dir)
    return expected


def check_models(body: dict[str, Any], settings: Settings) -> dict[str, dict[str, Any]]:
    assert body["missing"] == []
    by_role = {model["role"]: model for model in body["models"]}
    assert len(by_role) == len(body["models"]), body  # one model per role
    expected = expected_models(settings)
    assert set(by_role) == set(expected)
    for role, info in expected.items():
        model = by_role[role]
        assert (model["name"], model["version"], model["sha256"]) == (
            info["name"], info["version"], info["sha256"]), model
        assert len(model["sha256"]) == 64
        assert model["device"] == "cpu"
        assert model["engine"]
        assert model["instances"] and all(isinstance(i, str) and i for i in model["instances"])
    return by_role


def test_models_lists_each_role_with_its_checksum(client: httpx.Client, settings: Settings) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    assert_request_id(response)
    for model in check_models(response.json(), settings).values():
        assert "warmup_ms" not in model
    body = response.json()  # OpenAI's list shape too, each entry with Inzwa's own fields
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == [m["name"] for m in body["models"]]
    assert all(m["object"] == "model" and m["sha256"] for m in body["data"]), body


def test_admin_warmup_times_every_instance(client: httpx.Client, settings: Settings, stack: Stack) -> None:
    response = client.post("/v1/admin/warmup", headers=stack.admin_headers())
    assert response.status_code == 200, response.text
    for model in check_models(response.json(), settings).values():
        warmup = model["warmup_ms"]
        assert set(warmup) == set(model["instances"]), model
        assert all(ms > 0 for ms in warmup.values()), model


# --- probes and request ids ------------------------------------------------------------------------


def test_probes(client: httpx.Client) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert_request_id(health)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True, ready.text
    assert_request_id(ready)


def test_request_ids_are_echoed_when_sane_and_made_up_otherwise(client: httpx.Client) -> None:
    sane = "client-42.abc_DEF"
    for method, path in (("GET", "/healthz"), ("GET", "/v1/models"), ("GET", "/no/such/route"),
                         ("POST", "/v1/chat")):
        response = client.request(method, path, headers={"x-request-id": sane}, json={})
        assert response.headers.get("x-request-id") == sane, (path, response.headers)
    assert_error(client.get("/no/such/route"), 404, "not_found")
    made_up = [client.get("/healthz").headers["x-request-id"] for _ in range(2)]
    assert made_up[0] != made_up[1]
    for insane in ("has spaces in it", "x" * 65, "semi;colon"):
        echoed = client.get("/healthz", headers={"x-request-id": insane}).headers["x-request-id"]
        assert echoed and echoed != insane


# --- a voice turn over Opus ------------------------------------------------------------------------


@dataclass
class OpusTurn:
    started: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    packets: list[bytes] = field(default_factory=list)


async def opus_turn(url: str, pcm: bytes, timeout_s: float) -> OpusTurn:
    encoder = OpusEncoder(SAMPLE_RATE)
    packets = encoder.encode(pcm) + encoder.flush()
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "codec": "opus", "sample_rate": OPUS_RATE,
                                  "language": "en"}))
        turn = OpusTurn(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        if turn.started.get("type") != "session.started":
            return turn

        async def send() -> None:
            t0 = time.monotonic()
            for index, packet in enumerate(packets):  # one 20 ms packet per message, in real time
                await asyncio.sleep(max(0.0, t0 + index * 0.02 - time.monotonic()))
                await ws.send(packet)
            await ws.send(json.dumps({"type": "end_turn"}))

        async def receive() -> None:
            async for message in ws:
                if isinstance(message, bytes):
                    turn.packets.append(message)
                    continue
                event = json.loads(message)
                turn.events.append(event)
                if event.get("type") == "tts.end":
                    return

        sender = asyncio.create_task(send())
        try:
            await asyncio.wait_for(receive(), timeout_s)
        finally:
            sender.cancel()
    return turn


def test_voice_turn_over_opus(stack: Stack, capital_wav: Path) -> None:
    turn = asyncio.run(opus_turn(stack.url, load_clip(capital_wav), timeout_s=90))
    assert turn.started["type"] == "session.started", turn.started
    assert turn.started["audio_out"] == {"codec": "opus", "sample_rate": OPUS_RATE, "frame_ms": 20}
    kinds = [event["type"] for event in turn.events]
    assert "error" not in kinds, turn.events
    finals = [event["text"] for event in turn.events if event["type"] == "asr.final"]
    assert "capital" in normalize(" ".join(finals)), finals
    assert kinds[-1] == "tts.end" and turn.events[-1].get("text", "").strip(), turn.events
    assert turn.packets, "no reply audio"
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate = OPUS_RATE
    decoder.layout = "mono"
    pieces = []
    for packet in turn.packets:
        assert 0 < len(packet) <= 1275
        frames = decoder.decode(av.Packet(packet))
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
        assert samples.size == OPUS_RATE // 50, samples.size  # every packet is 20 ms
        pieces.append(samples)
    audio = np.concatenate(pieces)
    if audio.dtype != np.int16:  # libopus may decode to float
        audio = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    assert audio.size / OPUS_RATE > 0.5
    assert rms_dbfs(audio.astype("<i2").tobytes()) > SILENCE_DBFS


# --- Schemathesis: no input makes the gateway fail with a 5xx --------------------------------------
# (Driven through `APIOperation.as_strategy` rather than `schemathesis.pytest.from_fixture`, whose
# lazy parametrization needs `Item._nodeid`, which pytest 9 no longer has.)

FUZZED = [  # every operation of the gateway's OpenAPI document (checked against the live one)
    ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/sessions/{session_id}"),
    ("GET", "/v1/sessions"), ("DELETE", "/v1/sessions/{session_id}"),
    ("POST", "/v1/chat"), ("POST", "/v1/tts"), ("POST", "/v1/asr"), ("GET", "/v1/models"),
    ("POST", "/v1/admin/warmup"), ("GET", "/client-config"), ("POST", "/rtc/session"),
    ("POST", "/api/v1/handoff"),
]
MAX_FUZZ_TOKENS = 8  # what a generated chat may ask of the LLM
MAX_FUZZ_TEXT = 120  # characters a generated text to speak may have


# Fuzzed on the fake stack (see `fake_client`): the routes that reach a model.
MODEL_BOUND = {("POST", "/v1/chat"), ("POST", "/v1/tts"), ("POST", "/v1/asr")}


@pytest.fixture(scope="module")
def api_schema(stack: Stack) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{stack.http}/openapi.json", wait_for_schema=30)


@pytest.fixture(scope="module")
def fake_api_schema(fake_stack: Stack) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fake_stack.http}/openapi.json", wait_for_schema=30)


def test_fuzzing_covers_every_operation(api_schema: schemathesis.BaseSchema) -> None:
    live = {(result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()}
    from tests.test_openai_rest import OPENAI_FUZZED  # fuzzed there, with their own cost bounds
    from tests.test_turns_api import TURNS_FUZZED  # fuzzed there, on the fake stack

    assert live == set(FUZZED) | set(OPENAI_FUZZED) | set(TURNS_FUZZED)


def bound_cost(case: schemathesis.Case) -> None:
    """Keep generated chats and speech cheap; what is checked (no 5xx) does not depend on size."""
    body = case.body
    if not isinstance(body, dict):
        return
    if case.operation.path == "/v1/chat":
        tokens = body.get("max_tokens")
        if tokens is None or (type(tokens) is int and tokens > MAX_FUZZ_TOKENS):
            body["max_tokens"] = MAX_FUZZ_TOKENS
    elif case.operation.path == "/v1/tts" and isinstance(body.get("text"), str):
        body["text"] = body["text"][:MAX_FUZZ_TEXT]


@pytest.mark.parametrize(("method", "path"), FUZZED, ids=[f"{m} {p}" for m, p in FUZZED])
def test_no_request_gets_a_server_error(request: pytest.FixtureRequest, method: str, path: str) -> None:
    """Valid and invalid requests generated from the schema: 2xx or 4xx, never a 5xx."""
    bound = (method, path) in MODEL_BOUND
    schema: schemathesis.BaseSchema = request.getfixturevalue("fake_api_schema" if bound else "api_schema")
    stack: Stack = request.getfixturevalue("fake_stack" if bound else "stack")
    operation = schema[path][method]
    strategy = operation.as_strategy(GenerationMode.POSITIVE)
    if operation.body or operation.query:  # something to get wrong
        strategy = strategy | operation.as_strategy(GenerationMode.NEGATIVE)
    statuses: list[int] = []

    @given(case=strategy)
    @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target])
    def run(case: schemathesis.Case) -> None:
        bound_cost(case)
        # Admin routes refuse anonymous callers: the local admin token lets the fuzzer past.
        headers = stack.admin_headers() if path in ("/metrics", "/v1/admin/warmup") else None
        response = case.call_and_validate(checks=[not_a_server_error], timeout=60, headers=headers)
        statuses.append(response.status_code)

    run()
    assert statuses and all(status < 500 for status in statuses), statuses
