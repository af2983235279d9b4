"""The OpenAI-compatible REST routes, driven by the official `openai` SDK against the real stack.

Transcription of a human clip in WAV and in WebM/Opus and MP3 transcodings made here with PyAV
(checked against transcripts.tsv within the project's WER bound), streamed speech in four
formats decoded with PyAV, chat completions streamed and not, and refusals the SDK raises as
its own exception types. Schemathesis fuzzes the new routes (no 5xx), as tests/test_api.py
does for the others.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import openai
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from asr_worker.wer import word_error_rate
from common.audio import read_wav, rms_dbfs
from tests.gateway_thread import GatewayThread, running_gateway
from tests.stack import Stack

pytestmark = pytest.mark.e2e

WER_BOUND = 0.15  # the project's bound (tests/test_asr_accuracy.py)
CLIP = "LJ001-0004.wav"
SPEECH_TEXT = ("Good morning. The weather in Harare today is sunny and warm, with a light breeze from "
               "the east. In the afternoon a few clouds may build up over the hills, but no rain is "
               "expected. Tonight the sky stays clear and the temperature drops to about twelve degrees.")
SILENCE_DBFS = -45.0
OPENAI_FUZZED = [("POST", "/v1/audio/transcriptions"), ("POST", "/v1/audio/speech"),
                 ("POST", "/v1/chat/completions")]


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    # Anonymous loopback mode takes any key: the SDK needs one to send.
    return openai.OpenAI(base_url=f"{stack.http}/v1", api_key="inzwa-local", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(fixtures_dir: Path) -> str:
    lines = (fixtures_dir / "transcripts.tsv").read_text().splitlines()[1:]
    rows = dict(line.split("\t", 1) for line in lines)
    return rows[CLIP].strip()


def transcode(pcm: bytes, rate: int, container: str, codec: str) -> bytes:
    """The clip re-encoded with PyAV, as a browser (WebM/Opus) or a phone (MP3) would send it."""
    out = io.BytesIO()
    with av.open(out, "w", format=container) as muxer:
        stream: Any = muxer.add_stream(codec, rate=48000 if codec == "libopus" else rate)
        stream.codec_context.layout = "mono"
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.codec_context.format or "s16", layout="mono",
                                      rate=stream.codec_context.sample_rate)
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(converted):
                muxer.mux(packet)
        for packet in stream.encode(None):
            muxer.mux(packet)
    return out.getvalue()


@pytest.fixture(scope="module")
def uploads(fixtures_dir: Path) -> dict[str, tuple[str, bytes, str]]:
    path = fixtures_dir / CLIP
    pcm, rate = read_wav(path)
    return {"wav": (CLIP, path.read_bytes(), "audio/wav"),
            "webm": ("clip.webm", transcode(pcm, rate, "webm", "libopus"), "audio/webm"),
            "mp3": ("clip.mp3", transcode(pcm, rate, "mp3", "libmp3lame"), "audio/mpeg")}


# --- transcription ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["wav", "webm", "mp3"])
def test_transcription_of_a_human_clip_is_within_the_wer_bound(client: openai.OpenAI, uploads: dict[str, Any],
                                                                reference: str, kind: str) -> None:
    result = client.audio.transcriptions.create(model="whisper-1", file=uploads[kind], language="en")
    wer = word_error_rate(reference, result.text)
    assert wer <= WER_BOUND, (kind, wer, result.text)


def test_verbose_json_has_ordered_segments(client: openai.OpenAI, uploads: dict[str, Any],
                                           settings_model: str) -> None:
    result = client.audio.transcriptions.create(model=settings_model, file=uploads["wav"],
                                                response_format="verbose_json")
    segments = result.segments or []
    assert segments, result
    starts = [s.start for s in segments]
    assert starts == sorted(starts)
    assert all(0 <= s.start < s.end <= result.duration + 1.0 for s in segments), segments
    assert " ".join(s.text.strip() for s in segments) == result.text


CUE = re.compile(r"(\d\d):(\d\d):(\d\d)([,.])(\d{3}) --> (\d\d):(\d\d):(\d\d)[,.](\d{3})")


def cue_times(text: str, sep: str) -> list[tuple[float, float]]:
    times = []
    for match in CUE.finditer(text):
        assert match.group(4) == sep, match.group(0)
        h1, m1, s1, _, ms1, h2, m2, s2, ms2 = match.groups()
        times.append((int(h1) * 3600 + int(m1) * 60 + int(s1) + int(ms1) / 1000,
                      int(h2) * 3600 + int(m2) * 60 + int(s2) + int(ms2) / 1000))
    return times


@pytest.mark.parametrize(("fmt", "sep"), [("srt", ","), ("vtt", ".")])
def test_subtitles_parse(client: openai.OpenAI, uploads: dict[str, Any], fmt: str, sep: str) -> None:
    text = client.audio.transcriptions.create(model="whisper-1", file=uploads["wav"],
                                              response_format=fmt)  # type: ignore[call-overload]
    assert isinstance(text, str)
    if fmt == "vtt":
        assert text.startswith("WEBVTT")
    else:
        assert text.lstrip().startswith("1\n")
    times = cue_times(text, sep)
    assert times and all(start < end for start, end in times), text
    assert [t[0] for t in times] == sorted(t[0] for t in times)
    words = " ".join(line for line in text.splitlines() if line and not CUE.search(line)
                     and not line.isdigit() and line != "WEBVTT")
    assert word_error_rate("produced the block books which were the immediate predecessors of the "
                           "true printed book", words) <= WER_BOUND, words


def test_streamed_transcription_ends_with_the_whole_text(client: openai.OpenAI,
                                                         uploads: dict[str, Any]) -> None:
    deltas, done = [], None
    for event in client.audio.transcriptions.create(model="whisper-1", file=uploads["mp3"], stream=True):
        if event.type == "transcript.text.delta":
            deltas.append(event.delta)
        elif event.type == "transcript.text.done":
            done = event.text
    assert done is not None and deltas
    assert "".join(deltas).strip() == done


@pytest.fixture(scope="module")
def settings_model(stack: Stack) -> str:
    return stack.env.get("INZWA_ASR_MODEL", "whisper-base").rstrip("/").rsplit("/", 1)[-1]


def test_what_is_not_audio_is_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.transcriptions.create(model="whisper-1",
                                           file=("x.mp3", b"not audio at all" * 10, "audio/mpeg"))
    assert raised.value.code == "unsupported_audio"
    assert raised.value.body["type"] == "invalid_request_error"  # type: ignore[index]


# --- speech ----------------------------------------------------------------------------------------

def decode(data: bytes, fmt: str) -> tuple[int, np.ndarray]:
    if fmt == "pcm":
        return 24000, np.frombuffer(data[: len(data) - len(data) % 2], dtype="<i2")
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        chunks = [out.to_ndarray().reshape(-1) for frame in container.decode(stream)
                  for out in resampler.resample(frame)]
    return rate, np.concatenate(chunks).astype(np.int16)


@pytest.mark.parametrize("fmt", ["wav", "opus", "mp3", "pcm"])
def test_speech_streams_audio_that_decodes(client: openai.OpenAI, fmt: str) -> None:
    started, first, data = time.monotonic(), None, bytearray()
    # A text of its own per format: the TTS worker's audio cache would replay a text already
    # spoken all at once, and this test is about audio streamed as it is synthesized.
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=f"{SPEECH_TEXT} This is the {fmt} version.",
            response_format=fmt) as response:  # type: ignore[arg-type]
        assert response.status_code == 200
        for chunk in response.iter_bytes(1024):
            if first is None and len(data) + len(chunk) > 64:  # past any header
                first = time.monotonic() - started
            data.extend(chunk)
    total = time.monotonic() - started
    assert first is not None
    # The first phrase's audio leaves long before the last one is synthesized.
    assert first < 0.5 * total, (first, total)
    rate, samples = decode(bytes(data), fmt)
    assert rate == (48000 if fmt == "opus" else 24000)  # Opus always decodes at 48 kHz
    seconds = samples.size / rate
    # About 2.5 words a second for 50 words, with room either side.
    assert 8.0 < seconds < 40.0, seconds
    assert rms_dbfs(samples.tobytes()) > SILENCE_DBFS


def test_speed_is_the_voices_own_speaking_rate(client: openai.OpenAI) -> None:
    """Piper's length_scale per request: the same words take far less (more) time at speed 2
    (0.5). Not exactly half (twice): the voice's stochastic durations and its pauses do not all
    scale; measured with joe-medium 0.61 and 1.76 of the time at 1.0 (four runs, 0.60..0.63
    and 1.71..1.81). A speed outside OpenAI's range is a bad request."""
    text = "The weather in Harare today is sunny and warm, with a light breeze."

    def seconds(speed: float) -> float:
        audio = client.audio.speech.create(model="tts-1", voice="alloy", input=text,
                                           response_format="pcm", speed=speed)
        samples = decode(audio.content, "pcm")[1]
        assert rms_dbfs(samples.tobytes()) > SILENCE_DBFS
        return samples.size / 24000

    normal, fast, slow = seconds(1.0), seconds(2.0), seconds(0.5)
    assert 0.4 < fast / normal < 0.75, (normal, fast)
    assert 1.45 < slow / normal < 2.5, (normal, slow)
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input=text, speed=4.5)


def test_a_voice_without_a_rate_refuses_any_speed_but_one() -> None:
    from common.frames import SynthesizeRequest
    from tts_worker.worker import TtsWorker

    class FixedRate:  # a voice that says nothing of a speaking rate
        def info(self) -> dict[str, str]:
            return {}

        def warmup(self) -> None:
            pass

        def synthesize_stream(self, text: str, **options: object) -> Iterator[bytes]:
            yield b""

    worker = TtsWorker(FixedRate(), 20)
    assert worker.refusal(SynthesizeRequest(text="hi", speed=1.0)) is None
    assert worker.refusal(SynthesizeRequest(text="hi", speed=2.0)) == "this voice speaks at speed 1.0 only"


def test_speech_with_an_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.audio.speech.create(model="tts-9000", voice="alloy", input="hello")
    assert raised.value.code == "model_not_found"


# --- chat ------------------------------------------------------------------------------------------

def test_chat_completion(client: openai.OpenAI, chat_model: str) -> None:
    result = client.chat.completions.create(
        model=chat_model, max_tokens=16,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert result.object == "chat.completion"
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content
    assert result.choices[0].finish_reason in ("stop", "length")
    assert result.usage is not None and 0 < result.usage.completion_tokens <= 16
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_chat_completion_stream(client: openai.OpenAI, chat_model: str) -> None:
    stream = client.chat.completions.create(
        model=chat_model, max_tokens=24, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "You are brief."},
                  {"role": "user", "content": "Name three colours."}])
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 1, texts  # token by token, not one piece
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_chat_stop_sequence_cuts_the_text(client: openai.OpenAI, chat_model: str) -> None:
    messages: Any = [{"role": "user", "content": "Count from one to ten in words, separated by commas."}]
    for stream in (False, True):
        if stream:
            chunks = list(client.chat.completions.create(model=chat_model, max_tokens=32, messages=messages,
                                                         stop=[" ", ","], stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            cut = client.chat.completions.create(model=chat_model, max_tokens=32, messages=messages,
                                                 stop=[" ", ","])
            text = cut.choices[0].message.content or ""
        # Sampling varies between requests; whatever the words, the text ends before the first stop.
        assert text.strip() and " " not in text.strip() and "," not in text, text


@pytest.mark.parametrize("tokens", [["Hello", ", wor", "ld"], ["Hel", "lo,", " world"],
                                    ["Hello", ",", " world"]])
def test_a_stop_sequence_split_across_tokens_is_never_sent(tokens: list[str]) -> None:
    from gateway.openai_rest import Completion

    completion = Completion([", w"], limit=10)
    sent = "".join(completion.add(token) for token in tokens) + completion.rest()
    assert sent == "Hello" and completion.stopped and completion.finish_reason() == "stop"


def test_a_completion_without_a_stop_is_sent_whole_and_counted() -> None:
    from gateway.openai_rest import Completion

    completion = Completion(["###"], limit=3)
    sent = "".join(completion.add(token) for token in ["a#", "#b", "c"]) + completion.rest()
    assert sent == "a##bc" and not completion.stopped and completion.finish_reason() == "length"


@pytest.fixture(scope="module")
def chat_model(stack: Stack) -> str:
    return stack.env.get("INZWA_LLM_MODEL", "smollm2-135m").rstrip("/").rsplit("/", 1)[-1]


@pytest.mark.parametrize("messages", [[], [{"role": "robot", "content": "hi"}],
                                      [{"role": "user", "content": "x" * 5000}]])
def test_bad_chat_requests_are_bad_request_errors(client: openai.OpenAI, chat_model: str,
                                                  messages: Any) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=chat_model, messages=messages)
    assert raised.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert raised.value.body["message"]  # type: ignore[index]


def test_an_unknown_chat_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.code == "model_not_found"


# --- auth and limits, on a gateway of their own ------------------------------------------------------

KEY = "openai-test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed_gateway(stack: Stack) -> Iterator[GatewayThread]:
    with running_gateway(stack, api_keys=[KEY], rate_requests_per_minute=2) as running:
        yield running


def test_a_wrong_key_is_an_authentication_error(keyed_gateway: GatewayThread) -> None:
    bad = openai.OpenAI(base_url=f"{keyed_gateway.http}/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        bad.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.body["type"] == "authentication_error"  # type: ignore[index]
    assert raised.value.code == "invalid_api_key"


def test_too_many_requests_is_a_rate_limit_error(keyed_gateway: GatewayThread) -> None:
    good = openai.OpenAI(base_url=f"{keyed_gateway.http}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError) as raised:
        for _ in range(4):  # two a minute are allowed
            good.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", response_format="pcm")
    assert raised.value.code == "rate_limit_exceeded"
    assert raised.value.response.headers.get("retry-after")


# --- Schemathesis ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def api_schema(stack: Stack) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{stack.http}/openapi.json", wait_for_schema=30)


def bound_cost(case: schemathesis.Case) -> None:
    """Keep generated chats and speech cheap; what is checked (no 5xx) does not depend on size."""
    body = case.body
    if not isinstance(body, dict):
        return
    if case.operation.path == "/v1/chat/completions":
        body["max_tokens"] = 8
        body.pop("max_completion_tokens", None)
    elif case.operation.path == "/v1/audio/speech":
        text = body.get("input")
        if isinstance(text, str):
            body["input"] = text[:120]


@pytest.mark.parametrize(("method", "path"), OPENAI_FUZZED, ids=[f"{m} {p}" for m, p in OPENAI_FUZZED])
def test_no_openai_request_gets_a_server_error(api_schema: schemathesis.BaseSchema, method: str,
                                               path: str) -> None:
    operation = api_schema[path][method]
    strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)
    statuses: list[int] = []

    @given(case=strategy)
    @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target])
    def run(case: schemathesis.Case) -> None:
        bound_cost(case)
        response = case.call_and_validate(checks=[not_a_server_error], timeout=60)
        statuses.append(response.status_code)

    run()
    assert statuses and all(status < 500 for status in statuses), statuses


# --- models ----------------------------------------------------------------------------------------

def test_models_list_in_openai_shape_with_inzwa_fields(client: openai.OpenAI, chat_model: str,
                                                        settings_model: str) -> None:
    models = {m.id: m for m in client.models.list()}
    assert {chat_model, settings_model} <= set(models), models
    roles = set()
    for model in models.values():
        assert model.object == "model" and model.owned_by == "inzwa" and model.created > 0
        extra = model.model_dump()
        assert extra["name"] == model.id and len(extra["sha256"]) == 64, extra  # Inzwa's own fields
        roles.add(extra["role"])
    assert roles == {"asr", "llm", "tts"}
