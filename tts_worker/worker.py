"""The TTS worker process: phrases in, 20 ms PCM16 AudioChunks out, in arrival order.

A phrase whose text is too long or whose sample rate is not one we serve is refused with a
WorkerError (and closed with its final chunk); an engine that fails reports a WorkerError too,
and the phrase is still closed, so nothing waits on it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator
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
                 voices: VoiceLibrary | None = None) -> None:
        super().__init__()
        self.voice = voice
        self.voices = voices  # other voices (a language's own), loaded on demand (LRU)
        self._voice_name = voices.default_name if voices is not None else ""
        self.frame_ms = frame_ms
        self.max_text_chars = max_text_chars
        self.cache = cache if cache is not None and cache.enabled else None
        self._phonemizers: dict[tuple[str, str], Phonemizer | None] = {}  # (voice, language)
        self._model_id = ""

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
        """Speak this phrase with its voice. (Requests are served one at a time: the current
        voice is the worker's until the next phrase.)"""
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
