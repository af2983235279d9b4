"""Batched Whisper decoding (issue 15 item 3): several sessions' utterances in one `generate`.

With the real model: a batch gives every fixture the text it gets alone (English and Shona,
different lengths, with and without a previous-text prompt, given and detected language), in
fewer generate calls; the adapter batches the calls that queue behind a running decode, never
holds back a lone call, and a bad request fails only its own caller.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from asr_worker import registry
from asr_worker.batching import BatchingAsr, wrap
from asr_worker.interface import AsrRequest, Transcription
from common.audio import pcm16_to_float, read_wav
from common.settings import Settings

pytestmark = pytest.mark.models

# Padded lengths (asr_worker/engines/whisper.py padded_frames): 500, 500, 500, 600, 700, 800, 800.
CLIPS = ("q_en_weather.wav", "LJ001-0008.wav", "LJ001-0013.wav", "q_en_capital.wav",
         "q_sn_greeting.wav", "q_sn_weather.wav", "LJ001-0004.wav")


def _language(name: str) -> str:
    return "sn" if name.startswith("q_sn") else "en"


@pytest.fixture(scope="module")
def audio(fixtures_dir: Path) -> dict[str, np.ndarray]:
    return {name: pcm16_to_float(read_wav(fixtures_dir / name)[0]) for name in (*CLIPS, "jfk.wav")}


@pytest.fixture(scope="module")
def requests(audio: dict[str, np.ndarray]) -> list[AsrRequest]:
    given = [AsrRequest(audio[name], _language(name)) for name in CLIPS]
    # A tail after committed words (the session's tail decode), and language detection.
    tails = [AsrRequest(audio[name][len(audio[name]) // 2 :], _language(name), prompt="Hello there")
             for name in ("LJ001-0004.wav", "q_sn_weather.wav")]
    detected = [AsrRequest(audio[name], None) for name in ("q_en_weather.wav", "q_sn_greeting.wav")]
    silent = [AsrRequest(np.zeros(16000, dtype=np.float32), "en")]  # answered without a decode
    return [*given, *tails, *detected, *silent]


@pytest.fixture(scope="module")
def alone(whisper_engine: Any, requests: list[AsrRequest]) -> list[Transcription]:
    return [whisper_engine.transcribe(r.audio, r.language, prompt=r.prompt) for r in requests]


class _CountingModel:
    """Passes every call to CTranslate2's Whisper and counts `generate` calls and their sizes."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.generate_sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def generate(self, features: Any, prompts: list[list[int]], **options: Any) -> Any:
        self.generate_sizes.append(len(prompts))
        return self._model.generate(features, prompts, **options)


def test_a_batch_gives_each_clip_the_text_it_gets_alone(
    whisper_engine: Any, requests: list[AsrRequest], alone: list[Transcription],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counting = _CountingModel(whisper_engine._model.model)
    monkeypatch.setattr(whisper_engine._model, "model", counting)
    batched = whisper_engine.transcribe_batch(requests)
    assert [(b.text, b.language) for b in batched] == [(a.text, a.language) for a in alone]
    assert [b.confidence for b in batched] == pytest.approx([a.confidence for a in alone], abs=1e-4)
    assert all(a.text for a in alone[:-1]) and alone[-1].text == ""  # real speech was heard
    # Detection ran per item (this engine may pick any language: Shona often reads as another)
    assert alone[-3].language == "en" and alone[-2].language not in ("", "en")
    # 11 decodable requests in 5 padded lengths, the prompted tails apart: fewer calls than items
    # (fallback re-decodes of a looping item would add calls of one, so count the largest).
    assert max(counting.generate_sizes) >= 3
    assert len([s for s in counting.generate_sizes if s > 1]) >= 2


def test_the_adapter_batches_calls_that_queue_behind_a_running_decode(
    whisper_engine: Any, audio: dict[str, np.ndarray], requests: list[AsrRequest],
    alone: list[Transcription],
) -> None:
    batcher = BatchingAsr(whisper_engine, window_ms=5, max_batch=8)
    with ThreadPoolExecutor(max_workers=5) as pool:
        with _decoding(whisper_engine, batcher, pool, audio["jfk.wav"]) as first:
            queued = [pool.submit(batcher.transcribe, r.audio, r.language, r.prompt)
                      for r in requests[:4]]
            _wait_for(lambda: batcher.stats()["pending"] == 4)
        texts = [future.result(timeout=60).text for future in queued]
        assert first.result(timeout=60).text.startswith("And so my fellow Americans")
    assert texts == [a.text for a in alone[:4]]
    # The three 5 s-padded clips share one decode; q_en_capital (6 s padded) goes alone after.
    assert batcher.stats()["sizes"] == {1: 2, 3: 1}


def test_a_lone_call_does_not_wait_for_company(whisper_engine: Any, requests: list[AsrRequest],
                                               alone: list[Transcription]) -> None:
    batcher = BatchingAsr(whisper_engine, window_ms=60_000, max_batch=8)
    started = time.monotonic()
    heard = batcher.transcribe(requests[0].audio, requests[0].language)
    # Not a speed target: a wait for the window would take a minute, a decode well under that.
    assert time.monotonic() - started < 30
    assert heard.text == alone[0].text
    stats = batcher.stats()
    assert (stats["sizes"], stats["waited"]) == ({1: 1}, 0)


def test_a_bad_request_fails_its_own_caller_only(whisper_engine: Any, audio: dict[str, np.ndarray],
                                                 alone: list[Transcription]) -> None:
    batcher = BatchingAsr(whisper_engine, window_ms=5, max_batch=8)
    clip = audio[CLIPS[0]]
    not_audio = np.array(["not a sample"] * clip.size)  # batchable by its length, undecodable
    with ThreadPoolExecutor(max_workers=6) as pool:
        with _decoding(whisper_engine, batcher, pool, audio["LJ001-0008.wav"]):
            good = pool.submit(batcher.transcribe, clip, "en")
            bad = [pool.submit(batcher.transcribe, not_audio, "en") for _ in range(2)]
            unknown = pool.submit(batcher.transcribe, clip, "xx")  # no such language
            _wait_for(lambda: batcher.stats()["pending"] == 4)
        assert good.result(timeout=60).text == alone[0].text
        for future in bad:  # the batch failed, then each request was decoded alone
            with pytest.raises(ValueError, match="could not convert string to float"):
                future.result(timeout=60)
        with pytest.raises(ValueError, match="'xx' is not a valid language code"):
            unknown.result(timeout=60)
    stats = batcher.stats()
    assert stats["sizes"] == {1: 2, 3: 1} and stats["retried"] == 3


def test_the_registry_batches_only_engines_that_can(whisper_engine: Any) -> None:
    on = _settings(asr_batch_window_ms=5, asr_batch_max=8)
    assert isinstance(wrap(whisper_engine, on), BatchingAsr)
    assert wrap(whisper_engine, _settings(asr_batch_window_ms=0)) is whisper_engine
    assert wrap(whisper_engine, _settings(asr_batch_max=1)) is whisper_engine
    fake = registry.load_engine(_settings(asr_engine="fake"))
    assert not isinstance(fake, BatchingAsr)  # no transcribe_batch: served as before
    batched = wrap(whisper_engine, on)
    assert (batched.partials, getattr(batched, "prompted", False)) == (True, True)
    assert batched.info() == whisper_engine.info()


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextmanager
def _decoding(engine: Any, batcher: BatchingAsr, pool: ThreadPoolExecutor,
              clip: np.ndarray) -> Iterator[Future[Transcription]]:
    """A first call that holds the decoder for as long as the block runs: the engine's own lock
    is held here, so the calls made inside the block queue behind it whatever the scheduling."""
    with engine._lock:
        first = pool.submit(batcher.transcribe, clip, "en")
        _wait_for(lambda: batcher.stats()["batches"] == 1)  # taken by the dispatcher, waiting
        yield first


def _wait_for(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        threading.Event().wait(0.005)


def test_the_batch_key_forecasts_the_padded_length_and_prompt_position(
    whisper_engine: Any, requests: list[AsrRequest],
) -> None:
    from asr_worker.engines.whisper import padded_frames

    for request in requests[:-1]:  # the silent one is keyed too (the engine answers it at once)
        features = whisper_engine._model.feature_extractor(request.audio)
        key = whisper_engine.batch_key(request)
        assert key is not None and key[0] == padded_frames(features.shape[-1])
        if request.language is None:  # detected after encoding: -1 until then
            assert key[1] == -1
        else:  # <|startofprev|> and the prompt's tokens come before start-of-transcript
            said = whisper_engine._tokenizer(request.language).encode(" Hello there")
            assert key[1] == (1 + len(said) if request.prompt else 0)
    assert whisper_engine.batch_key(AsrRequest(np.zeros(800, dtype=np.float32), "en")) is None
    assert whisper_engine.batch_key(AsrRequest(np.ones(28 * 16000, dtype=np.float32), "en")) is None
