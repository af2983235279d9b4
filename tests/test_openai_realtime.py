"""WebSocket /v1/realtime driven by the official `openai` SDK's Realtime client, on the real stack.

A spoken question in 24 kHz PCM16 with server VAD; a manual turn in G.711 mu-law in and out; a
typed user item; and a reply cancelled mid-way and truncated, whose history then ends at the
audio the client says it played. Reply audio is checked as speech by transcribing it back
through the REST transcription route.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import openai
import pytest

from asr_worker.wer import normalize, word_error_rate
from common.audio import read_wav, resample_pcm16, rms_dbfs, wav_bytes
from tests.loopback import LOOPBACK
from tests.stack import Stack

pytestmark = pytest.mark.e2e

SILENCE_DBFS = -45.0
# The tiny LLM's replies often hold made-up names ("Zabilala") that no ASR spells back: speech
# is checked as at least half of the reply's words heard back in its transcription.
HEARD_BACK = 0.5
QUESTION = "what is the capital city of zimbabwe"
QUESTION_WER = 0.4  # the clip is robotic ("city on zimbabwe" is heard at times)
# 8 kHz G.711 loses everything above 4 kHz: the robotic question comes out as "the bomb we", so
# the telephone test speaks a human clip, held to the project's WER bound (test_asr_accuracy.py).
HUMAN_CLIP, WER_BOUND = "LJ001-0004.wav", 0.15
EVENT_TIMEOUT_S = 60.0
# Faster than any voice here speaks: Piper joe-medium measured 3.9-5.1 words/s (short words
# fastest: "It is a story of a lion and a hare, and of a day in the sun." in 3.36 s).
MAX_WORDS_PER_S = 6.0


@dataclass
class Events:
    """Every server event of one connection, read in the background, with waits on them."""

    connection: Any
    seen: list[Any] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    async def pump(self) -> None:
        while True:
            event = await self.connection.recv()
            self.seen.append(event)
            self.arrived.append(time.monotonic())
            self._wake.set()

    async def wait(self, kind: str, after: int = 0, where: Callable[[Any], bool] = lambda e: True,
                   within_s: float = EVENT_TIMEOUT_S) -> Any:
        deadline = time.monotonic() + within_s
        while True:
            for event in self.seen[after:]:
                if event.type == kind and where(event):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kind} in {within_s} s; saw {[e.type for e in self.seen]}")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.01, deadline - time.monotonic()))

    def of(self, kind: str, after: int = 0) -> list[Any]:
        return [e for e in self.seen[after:] if e.type == kind]


async def session(stack: Stack, body: Callable[[Any, Events], Any], **connect: Any) -> Any:
    client = openai.AsyncOpenAI(base_url=f"{stack.http}/v1", api_key="inzwa-local", max_retries=0)
    async with client.realtime.connect(model=connect.pop("model", "gpt-realtime"), **connect) as connection:
        events = Events(connection)
        pump = asyncio.create_task(events.pump())
        try:
            return await asyncio.wait_for(body(connection, events), 240)
        finally:
            pump.cancel()


def clip_pcm(path: Path, rate: int) -> bytes:
    pcm, clip_rate = read_wav(path)
    return resample_pcm16(pcm, clip_rate, rate)


async def stream(connection: Any, audio: bytes, chunk: int, seconds_per_chunk: float) -> None:
    """Audio in real time, as a microphone would send it."""
    started = time.monotonic()
    for index, at in enumerate(range(0, len(audio), chunk)):
        await connection.input_audio_buffer.append(audio=base64.b64encode(audio[at: at + chunk]).decode())
        await asyncio.sleep(max(0.0, started + (index + 1) * seconds_per_chunk - time.monotonic()))


def assert_question(transcript: str) -> None:
    assert "capital" in normalize(transcript).split(), transcript
    assert word_error_rate(QUESTION, transcript) <= QUESTION_WER, transcript


def reply_pcm(events: Events, after: int = 0) -> bytes:
    return b"".join(base64.b64decode(e.delta) for e in events.of("response.output_audio.delta", after))


COMFORT_RMS = 60  # int16 RMS above the gateway's comfort noise (std 24): what a voice frame has


def voiced_seconds(pcm: bytes, rate: int = 24000) -> float:
    """Seconds of 20 ms frames louder than comfort noise: the voice's own audio, without the
    noise the gateway plays while a late phrase is on its way (a loaded machine's gaps)."""
    frame = rate // 50
    samples = np.frombuffer(pcm[: len(pcm) // (2 * frame) * 2 * frame], np.int16).astype(np.float64)
    rms = np.sqrt((samples.reshape(-1, frame) ** 2).mean(axis=1))
    return float((rms > COMFORT_RMS).sum()) / 50


def transcribe_back(stack: Stack, pcm: bytes, rate: int) -> str:
    response = LOOPBACK.post(f"{stack.http}/v1/audio/transcriptions", timeout=120,
                          files={"file": ("reply.wav", wav_bytes(pcm, rate), "audio/wav")},
                          data={"model": "whisper-1", "language": "en"})
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def assert_speech(stack: Stack, pcm: bytes, rate: int, transcript: str) -> None:
    assert len(pcm) / 2 / rate > 0.5, len(pcm)
    assert rms_dbfs(pcm) > SILENCE_DBFS
    heard = set(normalize(transcribe_back(stack, pcm, rate)).split())
    words = normalize(transcript).split()
    assert sum(1 for word in words if word in heard) >= HEARD_BACK * len(words), (transcript, heard)


# --- server VAD, PCM16 24 kHz ------------------------------------------------------------------------

def test_a_spoken_question_with_server_vad(stack: Stack, fixtures_dir: Path) -> None:
    audio = clip_pcm(fixtures_dir / "q_en_capital.wav", 24000) + bytes(24000 * 2 * 2)  # + 2 s quiet

    async def body(connection: Any, events: Events) -> None:
        created = await events.wait("session.created")
        assert created.session.audio.input.format.rate == 24000
        await connection.session.update(session={
            "type": "realtime", "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 24000},
                          "turn_detection": {"type": "server_vad", "silence_duration_ms": 400},
                          "transcription": {"model": "whisper-1"}},
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}}})
        await events.wait("session.updated")
        await stream(connection, audio, 960, 0.02)
        started = await events.wait("input_audio_buffer.speech_started")
        transcribed = await events.wait("conversation.item.input_audio_transcription.completed")
        assert transcribed.item_id == started.item_id
        assert_question(transcribed.transcript)
        await events.wait("input_audio_buffer.committed")
        done = await events.wait("response.done")
        assert done.response.status == "completed", done
        transcript = (await events.wait("response.output_audio_transcript.done")).transcript
        assert transcript.strip()
        assert events.of("response.created") and events.of("response.output_item.added")
        assert_speech(stack, reply_pcm(events), 24000, transcript)

    asyncio.run(session(stack, body))


# --- manual turns, G.711 mu-law in and out -------------------------------------------------------------

def ulaw_encode(pcm: bytes) -> bytes:
    """mu-law by FFmpeg's encoder (PyAV), not ours."""
    context: Any = av.CodecContext.create("pcm_mulaw", "w")
    context.sample_rate, context.layout, context.format = 8000, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16",
                                       layout="mono")
    frame.sample_rate = 8000
    return b"".join(bytes(packet) for packet in context.encode(frame))


def ulaw_decode(data: bytes) -> bytes:
    context: Any = av.CodecContext.create("pcm_mulaw", "r")
    context.sample_rate, context.layout = 8000, "mono"
    return b"".join(frame.to_ndarray().astype("<i2").tobytes() for frame in context.decode(av.Packet(data)))


def test_a_manual_turn_in_g711_ulaw(stack: Stack, fixtures_dir: Path) -> None:
    audio = ulaw_encode(clip_pcm(fixtures_dir / HUMAN_CLIP, 8000))
    rows = (fixtures_dir / "transcripts.tsv").read_text().splitlines()[1:]
    reference = dict(row.split("\t", 1) for row in rows)[HUMAN_CLIP]

    async def body(connection: Any, events: Events) -> None:
        await events.wait("session.created")
        await connection.session.update(session={"type": "realtime", "audio": {
            "input": {"format": {"type": "audio/pcmu"}, "turn_detection": None},
            "output": {"format": {"type": "audio/pcmu"}}}})
        updated = await events.wait("session.updated")
        assert updated.session.audio.input.turn_detection is None
        await stream(connection, audio, 160, 0.02)  # 20 ms of 8 kHz mu-law: 160 bytes
        await connection.input_audio_buffer.commit()
        committed = await events.wait("input_audio_buffer.committed")
        await connection.response.create()
        transcribed = await events.wait("conversation.item.input_audio_transcription.completed")
        assert transcribed.item_id == committed.item_id
        assert word_error_rate(reference, transcribed.transcript) <= WER_BOUND, transcribed.transcript
        done = await events.wait("response.done")
        assert done.response.status == "completed"
        assert not events.of("input_audio_buffer.speech_started")  # no server VAD events
        transcript = (await events.wait("response.output_audio_transcript.done")).transcript
        ulaw = b"".join(base64.b64decode(e.delta) for e in events.of("response.output_audio.delta"))
        assert_speech(stack, ulaw_decode(ulaw), 8000, transcript)

    asyncio.run(session(stack, body))


def test_commit_without_audio_is_an_error_and_the_session_goes_on(stack: Stack) -> None:
    async def body(connection: Any, events: Events) -> None:
        await events.wait("session.created")
        await connection.input_audio_buffer.commit()
        error = await events.wait("error")
        assert error.error.code == "input_audio_buffer_commit_empty"
        await connection.send({"type": "no.such.event"})
        unknown = await events.wait("error", where=lambda e: e.error.code == "unknown_event")
        assert unknown.error.type == "invalid_request_error"
        await connection.session.update(session={"type": "realtime", "instructions": "Be brief."})
        assert (await events.wait("session.updated")).session.instructions == "Be brief."

    asyncio.run(session(stack, body))


def test_an_unknown_model_is_refused(stack: Stack) -> None:
    async def body(connection: Any, events: Events) -> None:
        error = await events.wait("error")
        assert error.error.code == "model_not_found"
        assert not events.of("session.created")

    asyncio.run(session(stack, body, model="gpt-17-realtime"))


# --- a typed item; cancel and truncate ------------------------------------------------------------------

async def ask(connection: Any, text: str) -> None:
    await connection.conversation.item.create(item={
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
    await connection.response.create()


def test_a_text_item_is_answered_with_speech(stack: Stack) -> None:
    async def body(connection: Any, events: Events) -> None:
        await events.wait("session.created")
        await ask(connection, "What is the capital of Zimbabwe?")
        added = await events.wait("conversation.item.added", where=lambda e: e.item.role == "user")
        assert added.item.content[0].text == "What is the capital of Zimbabwe?"
        done = await events.wait("response.done")
        assert done.response.status == "completed"
        transcript = (await events.wait("response.output_audio_transcript.done")).transcript
        deltas = "".join(e.delta for e in events.of("response.output_audio_transcript.delta"))
        assert normalize(deltas).split()[:3] == normalize(transcript).split()[:3], (deltas, transcript)
        assert_speech(stack, reply_pcm(events), 24000, transcript)

    asyncio.run(session(stack, body))


def test_cancel_and_truncate_keep_only_the_heard_audio_in_the_history(stack: Stack) -> None:
    async def body(connection: Any, events: Events) -> tuple[str, list[dict[str, str]], int, str]:
        created = await events.wait("session.created")
        await ask(connection, "Tell me a long story about a lion and a hare in the forest.")
        first = await events.wait("response.output_audio.delta")
        while len(reply_pcm(events)) < 24000 * 2 * 2.5:  # 2.5 s of the reply have arrived
            await events.wait("response.output_audio.delta", after=len(events.seen))
        played_ms = len(reply_pcm(events)) * 1000 // (24000 * 2) - 400  # the client is behind
        generated = "".join(e.delta for e in events.of("response.output_audio_transcript.delta"))
        await connection.response.cancel()
        await connection.conversation.item.truncate(item_id=first.item_id, content_index=0,
                                                    audio_end_ms=played_ms)
        cancelled = await events.wait("response.done")
        assert cancelled.response.status == "cancelled"
        await events.wait("conversation.item.truncated")
        mark = len(events.seen)
        await asyncio.sleep(1.0)
        assert not events.of("response.output_audio.delta", mark), "audio went on after the cancel"
        await ask(connection, "Thank you.")  # the next turn closes the cut one in the orchestrator
        await events.wait("response.done", after=mark)
        session_id = created.session.id.removeprefix("sess_")
        reply = await asyncio.to_thread(httpx.get, f"{stack.http}/v1/sessions/{session_id}", timeout=10)
        history = reply.json()["history"]
        return generated, history, played_ms, first.item_id

    generated, history, played_ms, _ = asyncio.run(session(stack, body))
    assert [m["role"] for m in history[:2]] == ["user", "assistant"], history
    heard = normalize(history[1]["content"]).split()
    said = normalize(generated).split()
    assert heard and heard == said[: len(heard)], (heard, said)  # a prefix of the reply...
    assert len(heard) < len(said), (heard, said)  # ...that stops before its end
    assert len(heard) <= played_ms / 1000 * MAX_WORDS_PER_S + 1, (heard, played_ms)



def test_speech_over_a_reply_interrupts_it_with_server_vad(stack: Stack, fixtures_dir: Path) -> None:
    question = clip_pcm(fixtures_dir / "q_en_capital.wav", 24000) + bytes(24000 * 2 * 2)

    async def body(connection: Any, events: Events) -> None:
        await events.wait("session.created")
        await ask(connection, "Tell me a long story about a lion and a hare in the forest.")
        first = await events.wait("response.output_audio.delta")
        await stream(connection, question, 960, 0.02)  # the user talks over the reply
        started = await events.wait("input_audio_buffer.speech_started")
        cut = await events.wait("response.done", where=lambda e: e.response.id == first.response_id)
        assert cut.response.status == "cancelled", cut
        assert events.seen.index(started) < events.seen.index(cut)
        transcribed = await events.wait("conversation.item.input_audio_transcription.completed",
                                        where=lambda e: e.item_id == started.item_id)
        assert_question(transcribed.transcript)
        answer = await events.wait("response.done", where=lambda e: e.response.id != first.response_id)
        assert answer.response.status == "completed"

    asyncio.run(session(stack, body))


def alaw_decode(data: bytes) -> bytes:
    context: Any = av.CodecContext.create("pcm_alaw", "r")
    context.sample_rate, context.layout = 8000, "mono"
    return b"".join(frame.to_ndarray().astype("<i2").tobytes() for frame in context.decode(av.Packet(data)))


def test_a_beta_client_gets_beta_event_names_and_alaw(stack: Stack) -> None:
    async def body(connection: Any, events: Events) -> None:
        await events.wait("session.created")
        # The beta session shape: flat formats by name, input_audio_transcription.
        await connection.send({"type": "session.update", "session": {
            "input_audio_format": "g711_alaw", "output_audio_format": "g711_alaw",
            "input_audio_transcription": {"model": "whisper-1"}, "turn_detection": None}})
        updated = await events.wait("session.updated")
        assert updated.session.output_audio_format == "g711_alaw"
        await ask(connection, "What is the capital of Zimbabwe?")
        done = await events.wait("response.done")
        assert done.response.status == "completed"
        assert events.of("conversation.item.created") and not events.of("conversation.item.added")
        assert not events.of("response.output_audio.delta")
        transcript = (await events.wait("response.audio_transcript.done")).transcript
        alaw = b"".join(base64.b64decode(e.delta) for e in events.of("response.audio.delta"))
        assert_speech(stack, alaw_decode(alaw), 8000, transcript)

    asyncio.run(session(stack, body))


# --- the session's own settings and the client's cancel, on the fake stack ---------------------------
# (real processes, scripted engines: what is under test is the protocol and the pipeline's
# reaction to it, not the models)

PIRATE = "You are a pirate. Answer in one sentence."
# A long typed message: the fake LLM echoes it, so the reply runs to its token cap (80 tokens at
# 50/s: 1.6 s of generation) while its first phrase ("You said Tell me,") is already playing.
LONG_ASK = "Tell me, please, a long story. " + "The lion ran to the river and the hare followed him. " * 8


def history_of(stack: Stack, created: Any) -> dict[str, Any]:
    session_id = created.session.id.removeprefix("sess_")
    reply = LOOPBACK.get(f"{stack.http}/v1/sessions/{session_id}", timeout=10)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def test_instructions_join_the_sessions_system_prompt(fake_stack: Stack) -> None:
    async def body(connection: Any, events: Events) -> None:
        created = await events.wait("session.created")
        await connection.session.update(session={"type": "realtime", "instructions": PIRATE})
        await events.wait("session.updated")
        await connection.session.update(session={"type": "realtime", "instructions": "x" * 4001})
        error = await events.wait("error")
        assert (error.error.code, error.error.param) == ("invalid_value", "session.instructions")
        await ask(connection, "Hello there.")  # the session starts with its prompt
        assert (await events.wait("response.done")).response.status == "completed"
        history = await asyncio.to_thread(history_of, fake_stack, created)
        server_prompt, _, own = history["system_prompt"].rpartition("\n\n")
        assert server_prompt and own == PIRATE  # below the server's (the too-long update changed nothing)
        mark = len(events.seen)
        await connection.session.update(session={"type": "realtime", "instructions": "Speak Shona."})
        updated = await events.wait("session.updated", after=mark)
        assert updated.session.instructions == "Speak Shona."
        history = await asyncio.to_thread(history_of, fake_stack, created)
        assert history["system_prompt"] == f"{server_prompt}\n\nSpeak Shona."  # changed live

    asyncio.run(session(fake_stack, body))


def test_silence_duration_is_the_sessions_own_and_bounded(fake_stack: Stack) -> None:
    def detection(ms: Any) -> dict[str, Any]:
        return {"type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", "silence_duration_ms": ms}}}}

    async def body(connection: Any, events: Events) -> None:
        await events.wait("session.created")
        for wrong in (150, 3001, "800"):
            mark = len(events.seen)
            await connection.send({"type": "session.update", "session": detection(wrong)})
            error = await events.wait("error", after=mark)
            assert error.error.param == "session.audio.input.turn_detection.silence_duration_ms", wrong
        await connection.session.update(session=detection(1500))
        updated = await events.wait("session.updated")
        assert updated.session.audio.input.turn_detection.silence_duration_ms == 1500
        assert len(events.of("session.updated")) == 1  # the refused updates changed nothing

    asyncio.run(session(fake_stack, body))


def test_response_cancel_stops_the_reply_in_the_pipeline_at_once(fake_stack: Stack) -> None:
    async def body(connection: Any, events: Events) -> dict[str, Any]:
        created = await events.wait("session.created")
        await ask(connection, LONG_ASK)
        await events.wait("response.output_audio.delta")
        await connection.response.cancel()
        assert (await events.wait("response.done")).response.status == "cancelled"
        await asyncio.sleep(2.0)  # longer than the rest of the reply would take to generate
        # No next turn: the orchestrator closed the cut one at the cancel.
        return await asyncio.to_thread(history_of, fake_stack, created)

    history = asyncio.run(session(fake_stack, body))
    assert history["history"][0] == {"role": "user", "content": LONG_ASK.strip()}, history
    reply = history["messages"][-1]
    assert reply["role"] == "assistant" and reply["heard"] is not None, reply  # interrupted
    assert "tts_end" not in reply["timings"], reply  # its synthesis stopped...
    assert len(reply["content"].split()) < 40, reply  # ...and so did its generation (cap: 80)


def vad_onset_ms(pcm16k: bytes) -> int:
    """Where the ASR's voice activity detector (webrtcvad, the server's settings) opens speech."""
    from asr_worker.vad import SpeechStart, TurnDetector
    from common.settings import Settings

    settings = Settings()
    detector = TurnDetector(settings.vad_aggressiveness, silence_ms=settings.vad_silence_ms,
                            min_speech_ms=settings.vad_min_speech_ms)
    return next(e.at_ms for e in detector.feed(pcm16k) if isinstance(e, SpeechStart))


def test_speech_started_comes_at_the_voice_onset(fake_stack: Stack, fixtures_dir: Path) -> None:
    quiet = bytes(24000)  # 0.5 s before the question, 1 s after it
    audio = quiet + clip_pcm(fixtures_dir / "q_en_capital.wav", 24000) + quiet * 2
    onset = vad_onset_ms(resample_pcm16(audio, 24000, 16000))

    async def body(connection: Any, events: Events) -> None:
        await events.wait("session.created")
        await stream(connection, audio, 960, 0.02)
        started = await events.wait("input_audio_buffer.speech_started")
        assert abs(started.audio_start_ms - onset) <= 40, (started.audio_start_ms, onset)
        delta = await events.wait("conversation.item.input_audio_transcription.delta")
        assert events.seen.index(started) < events.seen.index(delta)
        assert delta.item_id == started.item_id
        stopped = await events.wait("input_audio_buffer.speech_stopped")
        assert stopped.item_id == started.item_id and stopped.audio_end_ms > started.audio_start_ms
        assert len(events.of("input_audio_buffer.speech_started")) == 1

    asyncio.run(session(fake_stack, body))


def test_output_speed_is_the_voices_own_rate_and_bounded(fake_stack: Stack) -> None:
    def speaking(speed: float) -> Callable[[Any, Events], Any]:
        async def body(connection: Any, events: Events) -> float:
            await events.wait("session.created")
            for wrong in ({"output": {"speed": 2.0}}, {"input": {"turn_detection": {
                    "type": "server_vad", "create_response": False}}}):
                mark = len(events.seen)
                await connection.send({"type": "session.update", "session": {"type": "realtime",
                                                                              "audio": wrong}})
                assert (await events.wait("error", after=mark)).error.param.startswith("session.")
            await connection.session.update(session={"type": "realtime",
                                                     "audio": {"output": {"speed": speed}}})
            assert (await events.wait("session.updated")).session.audio.output.speed == speed
            await ask(connection, "Hello there.")
            assert (await events.wait("response.done")).response.status == "completed"
            said = "".join(e.delta for e in events.of("response.output_audio_transcript.delta"))
            return voiced_seconds(reply_pcm(events)), said

        return body

    normal, normal_text = asyncio.run(session(fake_stack, speaking(1.0)))
    fast, fast_text = asyncio.run(session(fake_stack, speaking(1.5)))
    assert normal > 1.0, normal  # (the fake voice: 25 ms a character)
    # Per character said: on a loaded machine a reply can be a fallback phrase of another length.
    # (The fake voice's quietest frames, between its bursts, are left out at both speeds alike.)
    ratio = (fast / len(fast_text)) / (normal / len(normal_text))
    assert abs(ratio - 1 / 1.5) < 0.05, (normal, normal_text, fast, fast_text)


def test_a_worker_killed_mid_reply_costs_the_realtime_client_only_a_delay(fake_stack: Stack) -> None:
    """Replay after a worker death (the orchestrator's) seen through Realtime: the LLM worker
    dies while the reply is generated, the response still completes, and its transcript deltas
    come once each, in order, and add up to the reply."""
    from tests.test_chaos import kill, wait_back

    async def body(connection: Any, events: Events) -> tuple[str, str, int]:
        await events.wait("session.created")
        await ask(connection, LONG_ASK)
        await events.wait("response.output_audio.delta")  # generation goes on for ~1.6 s
        pid = await asyncio.to_thread(kill, fake_stack, "llm_worker")
        before = len(events.of("response.output_audio_transcript.delta"))
        done = await events.wait("response.done")
        assert len(events.of("response.output_audio_transcript.delta")) > before  # (killed mid-way)
        assert done.response.status == "completed", done
        deltas = "".join(e.delta for e in events.of("response.output_audio_transcript.delta"))
        return deltas, (await events.wait("response.output_audio_transcript.done")).transcript, pid

    deltas, transcript, pid = asyncio.run(session(fake_stack, body))
    wait_back(fake_stack, "llm_worker", pid)
    assert deltas.strip() == transcript, (deltas, transcript)
    assert transcript.startswith("You said Tell me, please, a long story.")
    assert len(transcript.split()) >= 60, transcript  # the whole reply (80 tokens at most)


# --- the history a client edits; replies it asks for; cleared audio ------------------------------------

def message(role: str, text: str) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}


async def history_until(stack: Stack, created: Any,
                        check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """GET /v1/sessions/{id} until `check` holds (the orchestrator acts on the frames in order,
    after the gateway's event), for at most 5 s; the last answer either way."""
    for _ in range(50):
        history = await asyncio.to_thread(history_of, stack, created)
        if check(history):
            break
        await asyncio.sleep(0.1)
    return history


def roles_and_text(history: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in history["history"]]


def test_added_items_join_the_history_and_deleted_ones_leave_it(fake_stack: Stack) -> None:
    async def body(connection: Any, events: Events) -> tuple[dict[str, Any], dict[str, Any]]:
        created = await events.wait("session.created")
        # A framework syncing its chat context: no reply to any of these.
        for role, text in (("assistant", "I am Inzwa."), ("system", "Be brief.")):
            await connection.conversation.item.create(item=message(role, text))
        await ask(connection, "Hello there.")
        assert (await events.wait("response.done")).response.status == "completed"
        assert len(events.of("response.created")) == 1  # only the one asked for
        items = [e.item for e in events.of("conversation.item.added")]
        before = await history_until(fake_stack, created, lambda h: len(h["history"]) == 4)
        for item in items[:3]:  # the added assistant and system items and the user's question
            await connection.conversation.item.delete(item_id=item.id)
            await events.wait("conversation.item.deleted", where=lambda e: e.item_id == item.id)  # noqa: B023
        after = await history_until(fake_stack, created, lambda h: len(h["history"]) == 1)
        return before, after

    before, after = asyncio.run(session(fake_stack, body))
    reply = before["history"][-1]["content"]
    assert roles_and_text(before) == [("assistant", "I am Inzwa."), ("system", "Be brief."),
                                      ("user", "Hello there."), ("assistant", reply)], before
    assert roles_and_text(after) == [("assistant", reply)], after  # what the LLM sees next
    stored = [(m["role"], m["content"]) for m in after["messages"] if m["content"]]
    assert stored == [("assistant", reply)], after  # and the stored conversation


def test_response_create_replies_from_the_history_alone(fake_stack: Stack) -> None:
    async def body(connection: Any, events: Events) -> dict[str, Any]:
        created = await events.wait("session.created")
        for wrong, param in (({"conversation": "none"}, "response.conversation"), ({"input": []},
                             "response.input"), ({"instructions": 7}, "response.instructions")):
            mark = len(events.seen)
            await connection.send({"type": "response.create", "response": wrong})
            assert (await events.wait("error", after=mark)).error.param == param
        await connection.response.create(response={"instructions": "Greet the caller."})  # speak first
        first = await events.wait("response.done")
        assert first.response.status == "completed"
        # Context synced by a framework, then a reply asked for: from that history.
        await connection.conversation.item.create(item=message("user", "My name is Rudo."))
        await connection.conversation.item.create(item=message("assistant", "Hello Rudo."))
        mark = len(events.seen)
        await connection.response.create()
        await events.wait("response.done", after=mark)
        transcript = (await events.wait("response.output_audio_transcript.done", after=mark)).transcript
        assert transcript.startswith("You said My name is Rudo."), transcript  # (the fake LLM's echo)
        mark = len(events.seen)  # a typed question with this reply's own instructions
        await connection.conversation.item.create(item=message("user", "What is my name?"))
        await connection.response.create(response={"instructions": "Answer with the name only."})
        assert (await events.wait("response.done", after=mark)).response.status == "completed"
        users = [e for e in events.of("conversation.item.added", mark) if e.item.role == "user"]
        assert len(users) == 1, users  # (its echo from the orchestrator is not a second item)
        return await history_until(fake_stack, created, lambda h: len(h["history"]) == 6)

    history = asyncio.run(session(fake_stack, body))
    assert [role for role, _ in roles_and_text(history)] == [
        "assistant", "user", "assistant", "assistant", "user", "assistant"], history
    assert history["system_prompt"].count("Answer with the name only.") == 0  # that reply's only


def test_a_manual_turn_is_answered_at_response_create(fake_stack: Stack, fixtures_dir: Path) -> None:
    speech = clip_pcm(fixtures_dir / "q_en_capital.wav", 24000)

    async def body(connection: Any, events: Events) -> None:
        await events.wait("session.created")
        await connection.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": None}}})
        await events.wait("session.updated")
        await stream(connection, speech, 4800, 0.1)
        await connection.input_audio_buffer.commit()
        await events.wait("conversation.item.input_audio_transcription.completed")
        await asyncio.sleep(1.0)  # (the fake LLM would have begun long since)
        assert not events.of("response.created"), "a reply began before response.create"
        await connection.response.create()
        assert (await events.wait("response.done")).response.status == "completed"
        transcript = (await events.wait("response.output_audio_transcript.done")).transcript
        assert transcript.startswith("You said what is the capital of zimbabwe."), transcript
        mark = len(events.seen)  # spoken words and a typed item, answered together
        await stream(connection, speech, 4800, 0.1)
        await connection.input_audio_buffer.commit()
        await ask(connection, "And of Zambia?")
        await events.wait("response.done", after=mark)
        transcript = (await events.wait("response.output_audio_transcript.done", after=mark)).transcript
        assert transcript.startswith("You said what is the capital of zimbabwe And of Zambia"), transcript

    asyncio.run(session(fake_stack, body))


def test_cleared_audio_never_becomes_a_transcript(fake_stack: Stack, fixtures_dir: Path) -> None:
    speech = clip_pcm(fixtures_dir / "q_en_capital.wav", 24000)

    async def body(connection: Any, events: Events) -> Any:
        await events.wait("session.created")
        await connection.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": None}}})
        await events.wait("session.updated")
        await stream(connection, speech[: len(speech) // 2 // 4800 * 4800], 4800, 0.1)  # mid-word
        await connection.input_audio_buffer.clear()
        await events.wait("input_audio_buffer.cleared")
        await stream(connection, bytes(4800 * 4), 4800, 0.1)  # 400 ms of quiet
        await connection.input_audio_buffer.commit()
        return await events.wait("conversation.item.input_audio_transcription.completed")

    transcribed = asyncio.run(session(fake_stack, body))
    assert transcribed.transcript == "", transcribed  # the cleared speech was never transcribed


def test_the_sessions_instructions_are_kept_after_it_ends(fake_stack: Stack) -> None:
    async def body(connection: Any, events: Events) -> Any:
        created = await events.wait("session.created")
        await connection.session.update(session={"type": "realtime", "instructions": PIRATE})
        await events.wait("session.updated")
        await ask(connection, "Hello there.")
        await events.wait("response.done")
        return created

    created = asyncio.run(session(fake_stack, body))
    for _ in range(50):  # until the orchestrator has ended it
        history = history_of(fake_stack, created)
        if not history["live"]:
            break
        time.sleep(0.1)
    assert not history["live"], history
    assert history["system_prompt"].endswith(f"\n\n{PIRATE}"), history["system_prompt"]


def test_deleting_the_reply_being_played_stops_it_and_forgets_it(fake_stack: Stack) -> None:
    async def body(connection: Any, events: Events) -> dict[str, Any]:
        created = await events.wait("session.created")
        await ask(connection, LONG_ASK)
        playing = await events.wait("response.output_audio.delta")
        await connection.conversation.item.delete(item_id=playing.item_id)
        assert (await events.wait("response.done")).response.status == "cancelled"
        await events.wait("conversation.item.deleted")
        return await history_until(fake_stack, created, lambda h: len(h["history"]) == 1)

    history = asyncio.run(session(fake_stack, body))
    assert roles_and_text(history) == [("user", LONG_ASK.strip())], history
    assert [m["role"] for m in history["messages"]] == ["user"], history["messages"]
