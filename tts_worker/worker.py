"""The TTS worker process: phrases in, 20 ms PCM16 AudioChunks out, in arrival order.

A phrase whose text is too long or whose sample rate is not one we serve is refused with a
WorkerError (and closed with its final chunk); an engine that fails reports a WorkerError too,
and the phrase is still closed, so nothing waits on it.

With `concurrency` > 1 (INZWA_TTS_BATCH_MAX, issue 15) phrases of different sessions are
synthesized at once, each in its own thread, so that their sentences meet in the voice's batcher
(tts_worker/batching.py) and share VITS runs; a session's own phrases keep their arrival order
(one lane per session, one phrase of a lane at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from common.frames import AudioChunk, SynthesizeRequest, WorkerError
from common.languages import registry as languages
from common.languages.base import Phonemizer
from common.languages.sn_g2p import EN_US_ESPEAK_SYMBOLS
from common.metrics import TTS_FIRST_AUDIO_MS, TTS_PHRASES, TTS_RTF
from common.worker import SerialWorker, iterate_in_thread
from tts_worker.cache import AudioCache, SharedAudioCache, audio_key
from tts_worker.interface import SAMPLE_RATES, TTS, PhonemeSymbols, PhonemeVoice
from tts_worker.voices import VoiceLibrary

log = logging.getLogger(__name__)


def trained_symbols(config: Any) -> set[str]:
    """The symbols a voice learned. Piper maps hold the whole espeak symbol set, but an
    English voice only ever heard what espeak-ng's English produces: other symbols (ɓ, ɗ, ɲ...)
    sit on untrained embeddings, so a G2P must fall back to the nearest trained one."""
    symbols = set(config.phoneme_id_map)
    if str(getattr(config, "espeak_voice", "")).startswith("en"):
        symbols &= EN_US_ESPEAK_SYMBOLS
    return symbols


def speeds(voice: TTS) -> bool:
    """Whether the voice takes a per-request `speed` (an engine says so with `speeds = True`)."""
    return bool(getattr(voice, "speeds", False))


class TtsWorker(SerialWorker[SynthesizeRequest]):
    def __init__(self, voice: TTS, frame_ms: int, max_text_chars: int = 2000,
                 cache: AudioCache | SharedAudioCache | None = None,
                 voices: VoiceLibrary | None = None, concurrency: int = 1) -> None:
        super().__init__()
        self.voice = voice
        self.voices = voices  # other voices (a language's own), loaded on demand (LRU)
        self._voice_name = voices.default_name if voices is not None else ""
        self.frame_ms = frame_ms
        self.max_text_chars = max_text_chars
        self.cache = cache if cache is not None and cache.enabled else None
        self._phonemizers: dict[tuple[str, str], Phonemizer | None] = {}  # (voice, language)
        self._model_id = ""
        # Phrases at once (1: one at a time, SerialWorker's loop). Each lane is one session's
        # phrases (and admin warm-ups, lane None) waiting, with their arrival numbers.
        self.concurrency = max(1, concurrency)
        self._lanes: dict[str | None, deque[tuple[int, Any]]] = {}
        self._running: dict[str | None, asyncio.Task[None]] = {}  # lane -> its phrase under way
        self._arrivals = itertools.count()
        self._wake = asyncio.Event()

    async def handle(self, request: Any) -> None:
        await super().handle(request)
        self._wake.set()

    async def run(self) -> None:
        if self.concurrency < 2:
            await super().run()  # one phrase at a time, in arrival order
            return
        # A phrase holds an executor thread for its whole stream (iterate_in_thread): enough of
        # them for every phrase at once, next to the loop's other uses.
        executor = ThreadPoolExecutor(self.concurrency + 4, thread_name_prefix="tts")
        asyncio.get_running_loop().set_default_executor(executor)
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while not self._queue.empty():
                    request = self._queue.get_nowait()
                    lane = request.session_id if isinstance(request, SynthesizeRequest) else None
                    self._lanes.setdefault(lane, deque()).append((next(self._arrivals), request))
                await self._start_ready()
        finally:
            running = list(self._running.values())
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _start_ready(self) -> None:
        """Start the oldest waiting phrase of each idle lane, oldest first, up to `concurrency`.
        A phrase for another voice waits until the running ones are done (the worker speaks
        with one voice at a time), and holds back the younger ones meanwhile."""
        assert self.runtime is not None
        idle = [lane for lane in self._lanes if lane not in self._running]
        for lane in sorted(idle, key=lambda name: self._lanes[name][0][0]):
            if len(self._running) >= self.concurrency:
                break
            request = self._lanes[lane][0][1]
            if not await self._voice_ready(request):
                break
            self._lanes[lane].popleft()
            if not self._lanes[lane]:
                del self._lanes[lane]
            task = asyncio.create_task(self.serve_one(request))
            self._running[lane] = task
            task.add_done_callback(functools.partial(self._finished, lane))
        self.runtime.busy = self._queue.qsize() + len(self._running) + sum(map(len, self._lanes.values()))

    def _finished(self, lane: str | None, _: asyncio.Task[None]) -> None:
        del self._running[lane]
        self._wake.set()  # the lane's next phrase may start (and `busy` is counted again)

    async def _voice_ready(self, request: Any) -> bool:
        """Whether the phrase may start now with the worker's voice (switching to its own when
        nothing is running)."""
        if self.voices is None or not isinstance(request, SynthesizeRequest):
            return True
        if self.voices.name_for(request.voice, request.language) == self._voice_name:
            return True
        if self._running:
            return False
        await self._use_voice(request)
        return True

    def _cache_key(self, request: SynthesizeRequest) -> str:
        if not self._model_id:  # the weights' sha256; a remote voice's name and version
            info = self.voice.info()
            self._model_id = info.get("sha256") or f"{info.get('name', '')}:{info.get('version', '')}"
        voice = request.voice if request.speed == 1.0 else f"{request.voice}@{request.speed:g}"
        return audio_key(request.text, voice=voice, language=request.language or "en",
                         sample_rate=request.sample_rate, frame_ms=self.frame_ms,
                         model=f"{self._voice_name}/{self._model_id}")  # (the voice that speaks it)

    async def _replay(self, request: SynthesizeRequest, frames: list[bytes]) -> int:
        """A cached phrase: the same frames a synthesis made, at once."""
        assert self.runtime is not None
        seq = 0
        for payload in frames:
            if self.runtime.is_cancelled(request.session_id, request.turn_id):
                break
            await self._emit(request, seq, payload, final=False)
            seq += 1
        return seq

    def _phonemizer(self, language: str) -> Phonemizer | None:
        """The session language's G2P onto a phoneme voice (None: the voice's own espeak
        voice, or a text voice, which needs none)."""
        pack = languages.get(language or "en")
        if (self._voice_name, pack.code) not in self._phonemizers:
            made: Phonemizer | None = None
            voice = self.voice
            if pack.phonemizer is not None and isinstance(voice, PhonemeSymbols):
                made = pack.phonemizer(voice.phonemizer, trained_symbols(voice.config))
            self._phonemizers[self._voice_name, pack.code] = made
        return self._phonemizers[self._voice_name, pack.code]

    def refusal(self, request: SynthesizeRequest) -> str | None:
        """Why a phrase is not synthesized (None: it is fine)."""
        if len(request.text) > self.max_text_chars:
            return f"text longer than {self.max_text_chars} characters"
        if request.sample_rate not in SAMPLE_RATES:
            return f"sample_rate must be one of {', '.join(map(str, SAMPLE_RATES))}"
        if not 0.25 <= request.speed <= 4.0:
            return "speed must be from 0.25 to 4.0"
        if request.speed != 1.0 and not speeds(self.voice):
            return "this voice speaks at speed 1.0 only"
        return None

    def _stream(self, request: SynthesizeRequest, phonemizer: Phonemizer | None) -> Any:
        """The engine's frames; a phoneme voice gets the language's G2P, a text voice the text."""
        voice = self.voice
        # Only a voice that can change its rate is handed one (the others were refused above).
        rate: dict[str, Any] = {"speed": request.speed} if request.speed != 1.0 else {}
        if isinstance(voice, PhonemeVoice):
            return voice.synthesize_stream(request.text, sample_rate=request.sample_rate,
                                           frame_ms=self.frame_ms, language=request.language,
                                           phonemizer=phonemizer, **rate)
        return voice.synthesize_stream(request.text, sample_rate=request.sample_rate,
                                       frame_ms=self.frame_ms, language=request.language, **rate)

    def warm(self) -> None:
        self.voice.warmup()

    async def process(self, request: SynthesizeRequest) -> None:
        await self._use_voice(request)  # first: what the voice can do decides refusals (speed)
        refusal = self.refusal(request)
        if refusal is not None:
            await self._error(request, "bad_request", refusal)
            await self._emit(request, 0, b"", final=True)
            return
        try:
            seq = await self._synthesize(request)
        except Exception as exc:  # the client hears why; `failed` then closes the phrase
            await self._error(request, "tts_failed", f"synthesis failed: {type(exc).__name__}")
            raise
        await self._emit(request, seq, b"", final=True)

    async def _error(self, request: SynthesizeRequest, code: str, message: str) -> None:
        assert self.runtime is not None
        await self.runtime.emit(WorkerError(session_id=request.session_id, turn_id=request.turn_id,
                                            request_id=request.request_id, kind="tts", code=code,
                                            message=message))

    async def failed(self, request: SynthesizeRequest) -> None:
        await self._emit(request, 1_000_000, b"", final=True)

    async def _use_voice(self, request: SynthesizeRequest) -> None:
        """Speak this phrase with its voice. (Requests are served one at a time, or at once only
        with the same voice: the current voice is the worker's until the next switch.)"""
        if self.voices is None:
            return
        name, voice = await self.voices.get(self.voices.name_for(request.voice, request.language))
        if name != self._voice_name:
            self.voice, self._voice_name, self._model_id = voice, name, ""

    async def _synthesize(self, request: SynthesizeRequest) -> int:
        runtime = self.runtime
        assert runtime is not None
        seq = 0
        if runtime.is_cancelled(request.session_id, request.turn_id):
            return seq
        key = self._cache_key(request) if self.cache is not None else ""
        cached = await self.cache.fetch(key) if self.cache is not None else None
        if cached is not None:
            return await self._replay(request, cached)
        made: list[bytes] = []
        phonemizer = self._phonemizer(request.language)
        g2p = type(phonemizer).__name__ if phonemizer is not None else (
            "espeak" if isinstance(self.voice, PhonemeVoice) else "engine")
        TTS_PHRASES.labels(request.language or "en", g2p).inc()
        # iterate_in_thread is an async generator: closing it stops the synthesis thread
        frames = cast(AsyncGenerator[bytes, None],
                      iterate_in_thread(lambda: self._stream(request, phonemizer)))
        started, busy_s = time.perf_counter(), 0.0
        async with contextlib.aclosing(frames):
            async for payload in frames:
                busy_s = time.perf_counter() - started  # synthesis time up to this frame
                if seq == 0:
                    TTS_FIRST_AUDIO_MS.observe(busy_s * 1000)
                if runtime.is_cancelled(request.session_id, request.turn_id):
                    break
                made.append(payload)
                await self._emit(request, seq, payload, final=False)
                seq += 1
            else:  # the whole phrase was made (not cut short by a cancel): worth keeping
                if self.cache is not None:
                    await self.cache.store(key, made)
        if seq:
            TTS_RTF.observe(busy_s / (seq * self.frame_ms / 1000))
        return seq

    async def _emit(self, request: SynthesizeRequest, seq: int, payload: bytes, *, final: bool) -> None:
        assert self.runtime is not None
        await self.runtime.emit(
            AudioChunk(
                session_id=request.session_id,
                turn_id=request.turn_id,
                request_id=request.request_id,
                seq=seq,
                sample_rate=request.sample_rate,
                payload=payload,
                is_final=final,
                text=request.text if final else "",
            )
        )
