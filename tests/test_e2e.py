"""End to end: the real five processes, real models, real speech over the WebSocket."""

from __future__ import annotations

import asyncio
import difflib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import websockets

from asr_worker.wer import normalize
from common.audio import SAMPLE_RATE, pcm16_to_float, rms_dbfs
from gateway.client import TalkResult, talk
from tests.loopback import LOOPBACK
from tests.stack import Stack

pytestmark = pytest.mark.e2e


def wait_unloaded(stack: Stack, timeout_s: float = 60.0) -> None:
    """Until the orchestrator's overload ladder is back at level 0: the files before this one
    (a fuzzer posting chats, a stalled client's reply) can leave LLM requests queued, and at
    level 1 every session's partials are off, which this module's turn is measured with."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = LOOPBACK.get(f"{stack.http}/metrics", headers=stack.admin_headers(), timeout=10).text
        levels = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith(("inzwa_overload_level ", "inzwa_overload_level{"))]
        if levels and max(levels) == 0:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the stack stayed overloaded for {timeout_s} s")


@pytest.fixture(scope="module")
def capital_turn(stack: Stack, fixtures_dir: Path) -> TalkResult:
    wait_unloaded(stack)
    return asyncio.run(talk(fixtures_dir / "q_en_capital.wav", stack.url, timeout_s=90))


def test_voice_round_trip(capital_turn: TalkResult) -> None:
    result = capital_turn
    assert result.errors == []
    assert result.completed
    heard = normalize(result.transcript)
    assert "capital" in heard and "zimbabwe" in heard  # the robotic clip: "city on/of zimbabwe"
    assert result.reply_text.strip()
    audio = bytes(result.reply_audio)
    assert len(audio) / 2 / SAMPLE_RATE > 0.5  # PCM16 at 16 kHz, as the session asked
    assert rms_dbfs(audio) > -35.0  # speech, not silence
    assert result.v2v_ms is not None and result.v2v_ms > 0


def test_events_arrive_in_turn_order(capital_turn: TalkResult) -> None:
    kinds = [event["type"] for event in capital_turn.events]
    final = kinds.index("asr.final")
    assert final < kinds.index("llm.partial") < kinds.index("tts.start") < kinds.index("tts.end")
    assert kinds.count("tts.end") == 1


def quiet_frames(audio: np.ndarray, frame_ms: int = 20) -> list[bool]:
    """Whether each `frame_ms` frame is quiet (under -45 dBFS: comfort noise, pauses)."""
    size = SAMPLE_RATE * frame_ms // 1000
    return [10 * np.log10(np.mean(audio[i : i + size] ** 2) + 1e-12) < -45.0
            for i in range(0, len(audio), size)]


def collapse_gaps(audio: np.ndarray, frame_ms: int = 20, keep_ms: int = 200) -> np.ndarray:
    """Shorten every quiet stretch (comfort noise while a phrase is late) to keep_ms.

    Whisper tends to drop what follows a long gap, which would test the network's timing
    rather than the voice."""
    size = SAMPLE_RATE * frame_ms // 1000
    kept, quiet_run = [], 0
    for index, quiet in enumerate(quiet_frames(audio, frame_ms)):
        quiet_run = quiet_run + 1 if quiet else 0
        if quiet_run * frame_ms <= keep_ms:
            kept.append(audio[index * size : (index + 1) * size])
    return np.concatenate(kept) if kept else audio


def sounds_like(word: str, heard: set[str]) -> bool:
    """Exact, or a near spelling of a name ("harari" for "harare", "capitol" for "capital")."""
    return any(difflib.SequenceMatcher(None, word, other).ratio() >= 0.75 for other in heard)


def heard_words(whisper_engine, pcm: bytes) -> set[str]:
    """The words Whisper hears in the PCM16 audio, each stretch between pauses of 200 ms or
    more decoded on its own (Whisper sometimes stops after an odd word and drops the rest)."""
    audio = pcm16_to_float(pcm)
    frame = SAMPLE_RATE // 50  # 20 ms
    words: set[str] = set()
    start, run = None, 0
    for index, is_quiet in enumerate([*quiet_frames(audio), *[True] * 10]):
        run = run + 1 if is_quiet else 0
        if not is_quiet and start is None:
            start = index
        if start is not None and run == 10:  # 200 ms of quiet ends a stretch
            words |= set(normalize(whisper_engine.transcribe(
                audio[start * frame:(index + 1) * frame], "en").text).split())
            start = None
    return words


def test_reply_audio_is_intelligible(capital_turn: TalkResult, whisper_engine, piper_voice) -> None:
    """The voice says the reply: transcribing the streamed reply recovers most of the words the
    voice can make heard. Those are the reply's words Whisper hears in at least one of three
    offline renditions of the stream's own phrases (one synthesis each: a phrase cut moves the
    prosody; three: VITS samples its noise). The ASR often hears the robotic clip as "capital
    city unzimbabwe" and the LLM repeats the non-word; Whisper reads it differently each time
    and then sometimes drops the words after it, in the stream as offline (runs had 4 of 7
    words, the whole 2.9 s of audio there): that is the voice and Whisper, not audio the stream
    lost. So the stream must be heard as well as the worst offline rendition of this run is,
    and at least 60 % of the audible words whenever every rendition reaches that."""
    said = normalize(capital_turn.reply_text).split()
    phrases = [e["text"] for e in capital_turn.events if e["type"] == "tts.phrase"]
    assert normalize(" ".join(phrases)) == normalize(capital_turn.reply_text), phrases
    renditions = [heard_words(whisper_engine, b"".join(b"".join(piper_voice.synthesize_stream(
        phrase, sample_rate=SAMPLE_RATE)) for phrase in phrases)) for _ in range(3)]
    audible = [word for word in said if any(sounds_like(word, heard) for heard in renditions)]
    assert len(audible) >= len(said) / 2, (said, renditions)  # the voice itself is intelligible
    def share(heard: set[str]) -> float:
        return sum(sounds_like(word, heard) for word in audible) / len(audible)

    streamed = heard_words(whisper_engine, bytes(capital_turn.reply_audio))
    offline = min(share(heard) for heard in renditions)
    seconds = len(capital_turn.reply_audio) / 2 / SAMPLE_RATE  # (a lost phrase shows here too)
    assert share(streamed) >= min(0.6, offline), (
        capital_turn.reply_text, audible, sorted(streamed), renditions, seconds)


def test_sounds_like_accepts_near_spellings_only() -> None:
    assert sounds_like("harare", {"harari"}) and sounds_like("capital", {"capitol"})
    assert not sounds_like("harare", {"city", "of"})


def test_collapse_gaps_shortens_only_long_quiet_stretches() -> None:
    tone = 0.3 * np.sin(np.arange(SAMPLE_RATE) * 2 * np.pi * 220 / SAMPLE_RATE)
    quiet = np.zeros(SAMPLE_RATE)
    collapsed = collapse_gaps(np.concatenate([tone, quiet, tone]))
    assert len(collapsed) == 2 * SAMPLE_RATE + SAMPLE_RATE // 5


def test_five_processes_are_running(stack: Stack) -> None:
    pids = stack.pids()
    assert set(pids) == {"orchestrator", "asr_worker", "llm_worker", "tts_worker", "gateway"}
    assert len(set(pids.values())) == 5
    for pid in pids.values():
        os.kill(pid, 0)  # raises if the process does not exist


def test_restarting_the_llm_worker_keeps_the_assistant_working(
    stack: Stack, fixtures_dir: Path, capital_turn: TalkResult
) -> None:
    before = stack.pids()["llm_worker"]
    assert stack.ctl("restart", "llm_worker").returncode == 0
    deadline = time.monotonic() + 120
    while stack.pids().get("llm_worker") in (None, before) or not stack.ready():
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.5)
    result = asyncio.run(talk(fixtures_dir / "q_en_weather.wav", stack.url, timeout_s=90))
    assert result.completed and result.errors == [], result.summary()
    assert "tomorrow" in normalize(result.transcript).split()  # espeak's "rain in Harare" is hard
    assert result.reply_text.strip() and len(result.reply_audio) > SAMPLE_RATE


async def _exchange(url: str, *messages: str | bytes, wait: int = 1) -> tuple[list, int | None]:
    """Send messages; collect up to `wait` replies after the last one and the close code."""
    replies: list = []
    async with websockets.connect(url) as ws:
        for message in messages:
            await ws.send(message)
        try:
            while len(replies) < wait + 1:
                replies.append(await asyncio.wait_for(ws.recv(), 3))
        except websockets.ConnectionClosed:
            pass
        except TimeoutError:
            pass
        code = ws.close_code
    return [json.loads(r) if isinstance(r, str) else r for r in replies], code


START = json.dumps({"type": "start", "codec": "pcm16", "sample_rate": 16000})


@pytest.mark.parametrize(
    ("first", "code", "close"),
    [
        (json.dumps({"type": "start", "sample_rate": 44100}), "unsupported_sample_rate", 1003),
        (json.dumps({"type": "start", "codec": "mp3"}), "unsupported_codec", 1003),
        (json.dumps({"type": "start", "language": "tlh"}), "unsupported_language", 1003),
        (b"\x00\x00" * 320, "start_required", 1008),
        ("{not json", "bad_json", 1008),
        (json.dumps({"type": "shout"}), "bad_message", 1008),
        (json.dumps({"type": "start", "session_id": "abc"}), "bad_session_id", 1008),
    ],
)
def test_a_bad_start_is_refused_with_a_reason(stack: Stack, first: str | bytes, code: str,
                                               close: int) -> None:
    replies, close_code = asyncio.run(_exchange(stack.url, first))
    assert replies[0]["type"] == "error" and replies[0]["code"] == code
    assert close_code == close


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (b"\x00\x00\x00", "odd_frame"),
        (b"\x00\x00" * 16000, "frame_too_large"),
        (json.dumps({"type": "start"}), "already_started"),
        (json.dumps({"type": "end_turn", "x": [1]}), None),  # unknown fields are tolerated
    ],
)
def test_a_bad_frame_gets_an_error_and_the_session_goes_on(stack: Stack, bad: str | bytes,
                                                           code: str | None) -> None:
    silence = np.zeros(320, dtype="<i2").tobytes()
    replies, close_code = asyncio.run(
        _exchange(stack.url, START, bad, silence, json.dumps({"type": "end_turn"}), wait=1)
    )
    assert replies[0]["type"] == "session.started"
    errors = [r for r in replies[1:] if isinstance(r, dict) and r.get("type") == "error"]
    if code is None:
        assert errors == []
    else:
        assert errors and errors[0]["code"] == code
    assert close_code is None or close_code == 1000  # the server did not end the session


# 31 s in 100 ms frames, sent at once: far faster than real time, so the session's audio budget
# refuses most of it (a turn over INZWA_MAX_AUDIO_SECONDS is tested in test_ws_session.py).
OVER_LIMIT_AUDIO = [np.zeros(1600, dtype="<i2").tobytes()] * 310
BAD_INPUTS = [  # (messages after connecting, the error code the client must get)
    (["{not json"], "bad_json"),
    ([json.dumps({"type": "shout"})], "bad_message"),
    ([json.dumps({"type": "start", "sample_rate": 8000})], "unsupported_sample_rate"),
    ([b"\x00\x00" * 320], "start_required"),
    ([START, "{not json"], "bad_json"),
    ([START, json.dumps({"type": "shout"})], "bad_message"),
    ([START, b"\x00\x00" * 16000], "frame_too_large"),
    ([START, b"\x00\x00\x00"], "odd_frame"),
    ([START, json.dumps({"type": "end_turn", "pad": "x" * 5000})], "message_too_large"),
    ([START, *OVER_LIMIT_AUDIO], "audio_too_fast"),
    ([START, json.dumps({"type": "text", "text": " "})], "empty_text"),
    ([START, json.dumps({"type": "text", "text": "x" * 2001})], "text_too_long"),
    ([START, START], "already_started"),
]


def test_bad_inputs_get_clear_errors_and_a_parallel_session_is_unaffected(
    stack: Stack, fixtures_dir: Path
) -> None:
    """Every bad input gets its own error while a healthy voice turn goes on beside them."""

    async def run() -> tuple[TalkResult, list[tuple[list, int | None]]]:
        healthy = asyncio.create_task(talk(fixtures_dir / "q_en_capital.wav", stack.url, timeout_s=90))
        # All at once, each on its own connection (gather keeps their order): every one waits out
        # its read timeout, so one after another took ~27 s, and side by side they are also
        # beside each other's sessions, not only beside the healthy one.
        answers = await asyncio.gather(*(_exchange(stack.url, *messages, wait=2)
                                         for messages, _ in BAD_INPUTS))
        return await healthy, list(answers)

    healthy, answers = asyncio.run(run())
    for (messages, code), (replies, _) in zip(BAD_INPUTS, answers, strict=True):
        errors = [r.get("code") for r in replies if isinstance(r, dict) and r.get("type") == "error"]
        assert code in errors, (messages[-1][:60], replies)
    assert healthy.completed and healthy.errors == [], healthy.summary()
    assert "capital" in normalize(healthy.transcript)
    assert len(healthy.reply_audio) > SAMPLE_RATE  # at least half a second of reply


@pytest.fixture(scope="module")
def long_turn(stack: Stack, fixtures_dir: Path) -> TalkResult:
    """A 5 s question: long enough for partials even when the ASR worker is behind real time
    (it then tries one per 1.5 s of speech, and words show once two tries agree), which the
    3.4 s capital question is not on a loaded machine (a CI run heard none)."""
    wait_unloaded(stack)
    return asyncio.run(talk(fixtures_dir / "q_en_long.wav", stack.url, timeout_s=90))


def test_metrics_of_every_process_in_one_scrape(stack: Stack, capital_turn: TalkResult,
                                                long_turn: TalkResult) -> None:
    body = LOOPBACK.get(f"{stack.http}/metrics", headers=stack.admin_headers(), timeout=10).text
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)

    def total(prefix: str) -> float:
        return sum(v for k, v in samples.items() if k.startswith(prefix))

    assert total("inzwa_v2v_ms_count") >= 1  # gateway
    counters = {k: v for k, v in samples.items()
               if k.startswith(("inzwa_dropped_frames_total", "inzwa_overload_level"))}
    assert long_turn.completed and long_turn.partials, (long_turn.summary(), counters)
    assert total("inzwa_asr_partial_latency_ms_count") >= 1, counters  # gateway, from ASR timestamps
    assert total("inzwa_llm_ttfw_ms_count") >= 1  # orchestrator
    assert total("inzwa_tts_rtf_count") >= 1  # tts worker
    assert total('inzwa_turns_total{outcome="completed"}') >= 1
    assert "inzwa_session_active" in body
    assert total("inzwa_tts_first_audio_ms_count") >= 1  # tts worker: time to first audio
    assert total('inzwa_http_requests_total{method="WS",route="/ws/audio",status="101"}') >= 1
    for kind in ("asr", "llm", "tts"):  # declared at zero by the orchestrator, counted by it
        assert f'inzwa_worker_restarts_total{{kind="{kind}"}}' in samples
    assert any(name.startswith('inzwa_dropped_frames_total{reason="client_too_slow"}') for name in samples)
