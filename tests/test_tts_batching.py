"""Batched VITS synthesis across sessions (issue 15 item 3), with the real Piper voice.

One ONNX run of several sentences gives each the audio it gets alone (the voice's noise turned
off, so audio is deterministic), cut at its own length; the batcher batches sentences that queue
behind a running inference, never holds back a lone one, and a bad sentence fails only its own
caller; the TTS worker with batching on synthesizes several sessions' phrases in shared runs and
keeps each session's phrases in order, each closed by its final chunk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from common.frames import AudioChunk, SynthesizeRequest, WorkerError
from common.settings import Settings
from tests.test_engine_failures import RecordingRuntime, stop
from tts_worker.batching import TtsBatcher, attach
from tts_worker.engines.piper import PiperVoice
from tts_worker.registry import load_engine
from tts_worker.worker import TtsWorker

pytestmark = pytest.mark.models

SENTENCES = ("Yes.", "Hello there.", "The capital of Zimbabwe is Harare, a city of two million.",
             "It will rain tomorrow.")
PCM_TOLERANCE = 5e-4  # float audio; one PCM16 step is 3e-5 (measured: at most 1.7e-4)


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class Gate:
    """Passes every run to onnxruntime's session, recording each run's batch size; while
    `closed` is set, a run waits (so the calls made meanwhile queue behind it)."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.sizes: list[int] = []
        self.held = 0  # runs waiting at the gate now
        self.closed = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def run(self, output_names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.held += 1
        while self.closed.is_set():
            time.sleep(0.002)
        self.held -= 1
        self.sizes.append(int(feed["input"].shape[0]))
        result: list[np.ndarray] = self._session.run(output_names, feed)
        return result


@pytest.fixture(scope="module")
def voice() -> Iterator[PiperVoice]:
    """The configured voice, loaded by the registry with batching on, its noise turned off."""
    loaded = load_engine(_settings(tts_batch_max=4))
    assert isinstance(loaded, PiperVoice) and loaded.batches and loaded.inference is not None
    loaded.inference = None  # each test puts its own batcher in front
    loaded.config = dataclasses.replace(loaded.config, noise_scale=0.0, noise_w=0.0)
    loaded.session = Gate(loaded.session)
    yield loaded


@pytest.fixture(scope="module")
def ipa(voice: PiperVoice) -> list[str]:
    return [voice.phonemizer.phonemize(text)[0] for text in SENTENCES]


@pytest.fixture(scope="module")
def alone(voice: PiperVoice, ipa: list[str]) -> list[np.ndarray]:
    return [voice._infer(phonemes) for phonemes in ipa]


def _same(batched: list[np.ndarray], alone: list[np.ndarray]) -> None:
    assert [a.size for a in batched] == [a.size for a in alone]  # cut exactly at its own end
    for made, reference in zip(batched, alone, strict=True):
        assert float(np.max(np.abs(made - reference))) < PCM_TOLERANCE


def test_a_batch_gives_each_sentence_the_audio_it_gets_alone(
    voice: PiperVoice, piper_voice: PiperVoice, ipa: list[str], alone: list[np.ndarray],
) -> None:
    # Different lengths: 0.6 s to 4 s of audio, so every item but the longest is padded.
    assert len({a.size for a in alone}) == len(alone) and min(a.size for a in alone) > 0
    before = len(voice.session.sizes)  # type: ignore[attr-defined]
    _same(voice.infer_batch([(phonemes, 1.0) for phonemes in ipa]), alone)
    assert voice.session.sizes[before:] == [len(ipa)]  # type: ignore[attr-defined]
    _same(voice.infer_batch([(ipa[2], 1.5), (ipa[0], 1.5)]), [voice._infer(ipa[2], 1.5),
                                                              voice._infer(ipa[0], 1.5)])
    with pytest.raises(ValueError, match="one speed"):
        voice.infer_batch([(ipa[0], 1.0), (ipa[1], 1.5)])
    # The voice loaded without batching (no length output) speaks exactly as the batching one
    # does on its single path, and cannot run a batch.
    plain = PiperVoice(voice.config, piper_voice.session, piper_voice.phonemizer)
    assert all(np.array_equal(plain._infer(p), a) for p, a in zip(ipa, alone, strict=True))
    assert not piper_voice.batches
    with pytest.raises(RuntimeError, match="not loaded to infer batches"):
        piper_voice.infer_batch([(ipa[0], 1.0)])


@contextmanager
def _holding(voice: PiperVoice, batcher: TtsBatcher, pool: ThreadPoolExecutor,
             phonemes: str) -> Iterator[Future[np.ndarray]]:
    """A first sentence whose run is held at the gate for as long as the block runs: the calls
    made inside the block queue behind it whatever the scheduling."""
    gate: Gate = voice.session  # type: ignore[assignment]
    gate.closed.set()
    try:
        first = pool.submit(batcher.infer, phonemes, 1.0)
        _wait_for(lambda: gate.held == 1)
        yield first
    finally:
        gate.closed.clear()


def _wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_sentences_queued_behind_a_run_share_the_next_one(
    voice: PiperVoice, ipa: list[str], alone: list[np.ndarray],
) -> None:
    batcher = TtsBatcher(voice, window_ms=5, max_batch=8)
    with ThreadPoolExecutor(max_workers=5) as pool:
        with _holding(voice, batcher, pool, ipa[3]) as first:
            queued = [pool.submit(batcher.infer, ipa[i], 1.0) for i in (0, 1, 2)]
            faster = pool.submit(batcher.infer, ipa[1], 1.5)  # another speed: a run of its own
            _wait_for(lambda: batcher.stats()["pending"] == 4)
        _same([first.result(timeout=60)], [alone[3]])
        _same([future.result(timeout=60) for future in queued], alone[:3])
        _same([faster.result(timeout=60)], [voice._infer(ipa[1], 1.5)])
    assert batcher.stats()["sizes"] == {1: 2, 3: 1}


def test_a_lone_sentence_does_not_wait_for_company(voice: PiperVoice, ipa: list[str],
                                                   alone: list[np.ndarray]) -> None:
    batcher = TtsBatcher(voice, window_ms=60_000, max_batch=8)
    started = time.monotonic()
    audio = batcher.infer(ipa[1])
    # Not a speed target: a wait for the window would take a minute, a run well under that.
    assert time.monotonic() - started < 30
    assert np.array_equal(audio, alone[1])  # the single path itself
    stats = batcher.stats()
    assert (stats["sizes"], stats["waited"]) == ({1: 1}, 0)


def test_a_bad_sentence_fails_its_own_caller_only(voice: PiperVoice, ipa: list[str],
                                                  alone: list[np.ndarray]) -> None:
    batcher = TtsBatcher(voice, window_ms=5, max_batch=8)
    with ThreadPoolExecutor(max_workers=4) as pool:
        with _holding(voice, batcher, pool, ipa[1]):
            good = [pool.submit(batcher.infer, ipa[i], 1.0) for i in (0, 2)]
            bad = pool.submit(batcher.infer, None, 1.0)  # type: ignore[arg-type]  # not IPA: the batch fails
            _wait_for(lambda: batcher.stats()["pending"] == 3)
        _same([future.result(timeout=60) for future in good], [alone[0], alone[2]])
        with pytest.raises(TypeError):
            bad.result(timeout=60)
    stats = batcher.stats()  # (the retries alone are counted apart from the batches)
    assert stats["sizes"] == {1: 1, 3: 1} and stats["retried"] == 3


def test_batching_is_off_by_default_and_only_for_voices_that_can(
    voice: PiperVoice, piper_voice: PiperVoice,
) -> None:
    assert _settings().tts_batch_max == 1
    assert attach(voice, _settings()) is None and voice.inference is None
    assert attach(piper_voice, _settings(tts_batch_max=4)) is None  # no length output
    fake = load_engine(_settings(tts_engine="fake", tts_batch_max=4))
    assert getattr(fake, "inference", None) is None


def test_the_worker_synthesizes_several_sessions_phrases_in_shared_runs(
    voice: PiperVoice,
) -> None:
    batcher = TtsBatcher(voice, window_ms=5, max_batch=4)
    voice.inference = batcher.infer
    try:
        runtime = asyncio.run(asyncio.wait_for(_three_sessions(voice, batcher), 120))
    finally:
        voice.inference = None
    assert max(batcher.stats()["sizes"]) >= 2  # sessions shared a run
    for session in ("a", "b", "c"):
        chunks = [f for f in runtime.frames if isinstance(f, AudioChunk) and f.session_id == session]
        order = [c.request_id for c in chunks]
        # The session's phrases in arrival order, one after the other, never interleaved.
        assert order == sorted(order) and order[0].endswith("-1") and order[-1].endswith("-2")
        for rid in (f"{session}-1", f"{session}-2"):
            mine = [c for c in chunks if c.request_id == rid]
            assert [c.seq for c in mine] == list(range(len(mine)))
            assert [c.is_final for c in mine] == [False] * (len(mine) - 1) + [True]
            assert len(mine) > 10  # real audio: more than 200 ms


async def _three_sessions(voice: PiperVoice, batcher: TtsBatcher) -> RecordingRuntime:
    worker = TtsWorker(voice, frame_ms=20, concurrency=4)
    runtime = RecordingRuntime("tts")
    worker.runtime = runtime  # type: ignore[assignment]
    gate: Gate = voice.session  # type: ignore[assignment]
    gate.closed.set()  # the first session's first sentence holds the voice: the others queue
    serving = asyncio.create_task(worker.run())
    try:
        for number, text in ((1, "Good morning."), (2, "How are you?")):
            for session in ("a", "b", "c"):
                await worker.handle(SynthesizeRequest(session_id=session, turn_id=1, text=text,
                                                      request_id=f"{session}-{number}"))
        await asyncio.to_thread(_wait_for, lambda: batcher.stats()["pending"] == 2)
        assert runtime.busy == 6  # three phrases under way, three waiting in their lanes
        gate.closed.clear()
        for rid in ("a-2", "b-2", "c-2"):
            await runtime.wait_for(runtime.final_of(rid), timeout_s=90)
        await runtime.wait_for(lambda: runtime.busy == 0, timeout_s=10)
    finally:
        gate.closed.clear()
        await stop(serving)
    return runtime


def test_lanes_keep_refusals_cancels_and_voices_as_the_serial_worker_does() -> None:
    """With the fake voices of tests/test_voices.py (a Shona voice 3x slower than the default):
    phrases of several sessions at once, one session switching voices between its phrases."""
    from tests.test_voices import Loader

    loader = Loader()
    runtime = asyncio.run(asyncio.wait_for(_fake_sessions(loader), 60))
    assert loader.calls == {"sn-voice": 1}
    chunks = runtime.of(AudioChunk)
    frames = {rid: len([c for c in chunks if c.request_id == rid and c.payload])
              for rid in ("r1", "r2", "r3", "r4", "r5")}
    assert frames["r2"] == frames["r3"] >= 2.5 * frames["r1"] > 0  # each with its language's voice
    assert frames["r4"] == frames["r5"] == 0  # refused; cancelled
    assert [(e.request_id, e.code) for e in runtime.of(WorkerError)] == [("r4", "bad_request")]
    for rid in frames:  # every phrase closed once, by its last chunk
        assert [c.is_final for c in chunks if c.request_id == rid][-1]
        assert sum(c.is_final for c in chunks if c.request_id == rid) == 1
    order = [c.request_id for c in chunks if c.session_id == "s1"]
    assert order == sorted(order)  # s1's English phrase wholly before its Shona one


async def _fake_sessions(loader: Any) -> RecordingRuntime:
    from tests.test_voices import library

    voices = library(loader, capacity=3)
    worker = TtsWorker(voices._loaded["default"], frame_ms=20, voices=voices, concurrency=3)
    runtime = RecordingRuntime("tts")
    runtime.cancelled.add(("s4", 1))
    worker.runtime = runtime  # type: ignore[assignment]
    serving = asyncio.create_task(worker.run())
    text = "Mhoro, makadii?"
    for rid, session, language, rate in (("r1", "s1", "en", 16000), ("r2", "s1", "sn", 16000),
                                         ("r3", "s2", "sn", 16000), ("r4", "s3", "en", 12345),
                                         ("r5", "s4", "en", 16000)):
        await worker.handle(SynthesizeRequest(session_id=session, turn_id=1, request_id=rid,
                                              text=text, language=language, sample_rate=rate))
    try:
        for rid in ("r1", "r2", "r3", "r4", "r5"):
            await runtime.wait_for(runtime.final_of(rid), timeout_s=30)
        await runtime.wait_for(lambda: runtime.busy == 0, timeout_s=10)
    finally:
        await stop(serving)
    return runtime
