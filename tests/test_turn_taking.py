"""Turn-taking on the real stack: partials, barge-in, early replies, backpressure."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from asr_worker.wer import normalize
from gateway.client import Talker, load_clip, speech_end_s
from tests.stack import Stack

pytestmark = pytest.mark.e2e

START = json.dumps({"type": "start", "codec": "pcm16", "sample_rate": 16000})
FRAME = 640  # 20 ms


class Conversation:
    """A hand-driven client: stream audio in real time, read events as they come."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.log: list[tuple[float, Any]] = []  # (time, event dict or audio byte count)
        self.session_id = ""
        self.audio = bytearray()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.ws.send(START)
        self.session_id = json.loads(await self.ws.recv())["session_id"]
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if isinstance(message, bytes):
                self.audio.extend(message)
            item = len(message) if isinstance(message, bytes) else json.loads(message)
            self.log.append((time.monotonic(), item))

    async def stream(self, pcm: bytes) -> None:
        started = time.monotonic()
        for index, offset in enumerate(range(0, len(pcm), FRAME)):
            delay = started + index * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.ws.send(pcm[offset : offset + FRAME])

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for _, e in self.log if isinstance(e, dict) and (kind is None or e["type"] == kind)]

    def audio_bytes(self) -> int:
        return sum(e for _, e in self.log if isinstance(e, int))

    async def wait_for(self, predicate: Any, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, [e for _, e in self.log if isinstance(e, dict)]
            await asyncio.sleep(0.02)


def silence(ms: int) -> bytes:
    return b"\0" * (ms * 32)


def speech_of(path: Path) -> bytes:
    """The clip up to the end of its speech (its trailing silence cut off)."""
    pcm = load_clip(path)
    return pcm[: int(speech_end_s(pcm) * 16000) * 2]


def test_partials_arrive_before_the_final_and_grow_into_it(stack: Stack, fixtures_dir: Path) -> None:
    result = asyncio.run(Talker(load_clip(fixtures_dir / "q_en_long.wav")).run(stack.url, timeout_s=90))
    kinds = [e["type"] for e in result.events]
    assert result.partials, kinds
    assert kinds.index("asr.final") > max(i for i, k in enumerate(kinds) if k == "asr.partial")
    final = normalize(result.transcript)
    for partial in result.partials:  # each partial is committed text: a prefix of the final
        assert final.startswith(normalize(partial)), (partial, result.transcript)


async def _barge_in(stack: Stack, fixtures_dir: Path) -> tuple[Conversation, dict[str, Any]]:
    async with websockets.connect(stack.url) as ws:
        talk = Conversation(ws)
        await talk.start()
        await talk.stream(load_clip(fixtures_dir / "q_en_long.wav") + silence(300))
        await talk.wait_for(lambda: talk.audio_bytes() > 2.5 * 32000)  # 2.5 s of the reply
        await talk.stream(load_clip(fixtures_dir / "q_en_weather.wav"))
        await talk.wait_for(lambda: len(talk.events("tts.end")) >= 1, timeout_s=90)
        async with httpx.AsyncClient() as http:
            reply = await http.get(f"{stack.http}/v1/sessions/{talk.session_id}")
        return talk, reply.json()


def test_barge_in_cancels_the_reply_and_keeps_only_what_was_heard(
    stack: Stack, fixtures_dir: Path
) -> None:
    talk, state = asyncio.run(_barge_in(stack, fixtures_dir))
    cancels = talk.events("tts.cancel")
    assert len(cancels) == 1
    cancelled_turn = cancels[0]["turn_id"]
    # no audio of the cancelled turn after the cancel: nothing until the next turn's tts.start
    after = talk.log[[e for _, e in talk.log].index(cancels[0]) + 1 :]
    next_start = next(i for i, (_, e) in enumerate(after) if isinstance(e, dict) and e["type"] == "tts.start")
    assert not any(isinstance(e, int) for _, e in after[:next_start])
    assert talk.events("tts.end")[0]["turn_id"] != cancelled_turn
    # the history keeps the interrupted reply only up to what was played
    generated = "".join(e["token"] for e in talk.events("llm.partial") if e["turn_id"] == cancelled_turn)
    history = state["history"]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    heard = history[1]["content"]
    assert heard and normalize(generated).startswith(normalize(heard))
    assert len(heard) < len(generated.strip())


def test_an_early_reply_leaves_no_trace_when_the_speaker_goes_on(
    stack: Stack, fixtures_dir: Path
) -> None:
    """Speech, a 200 ms pause (long enough for an early reply, short of the end of turn),
    more speech: one turn, answering all of it."""

    async def run() -> tuple[Conversation, dict[str, Any]]:
        first = speech_of(fixtures_dir / "q_en_capital.wav")
        second = speech_of(fixtures_dir / "q_en_weather.wav")
        async with websockets.connect(stack.url) as ws:
            talk = Conversation(ws)
            await talk.start()
            await talk.stream(silence(300) + first + silence(200) + second + silence(800))
            await talk.wait_for(lambda: talk.events("tts.end"), timeout_s=90)
            async with httpx.AsyncClient() as http:
                state = (await http.get(f"{stack.http}/v1/sessions/{talk.session_id}")).json()
            return talk, state

    talk, state = asyncio.run(run())
    finals = talk.events("asr.final")
    assert len(finals) == 1
    heard = normalize(finals[0]["text"])
    assert "capital" in heard and "tomorrow" in heard
    turn = talk.events("tts.end")[0]["turn_id"]
    assert turn > 1  # an early reply was started at the pause, and discarded
    assert {e["turn_id"] for e in talk.events("llm.partial")} == {turn}
    assert len(talk.events("tts.start")) == 1 and not talk.events("tts.cancel")
    assert [m["role"] for m in state["history"]] == ["user", "assistant"]
    assert normalize(state["history"][0]["content"]) == heard


def test_a_client_that_stops_reading_does_not_block_another_session(
    stack: Stack, fixtures_dir: Path
) -> None:
    async def run() -> tuple[Any, float]:
        # max_queue=1: the stalled client's library stops reading almost at once, so the
        # gateway's socket to it fills up.
        async with websockets.connect(stack.url, max_queue=1) as stalled:
            await stalled.send(START)
            await stalled.recv()
            pcm = load_clip(fixtures_dir / "q_en_long.wav")
            await Conversation(stalled).stream(pcm)  # asks for a long story, never reads it
            await asyncio.sleep(3.0)  # its reply is being produced and is piling up
            started = time.monotonic()
            result = await Talker(load_clip(fixtures_dir / "q_en_capital.wav")).run(stack.url, timeout_s=60)
            return result, time.monotonic() - started

    result, elapsed = asyncio.run(run())
    assert result.completed and not result.errors, result.summary()
    assert elapsed < 45.0  # the clip itself takes ~4 s in real time
