"""The TTS worker process: phrases in, 20 ms PCM16 AudioChunks out, in arrival order."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from common.frames import AudioChunk, SynthesizeRequest
from common.languages import registry as languages
from common.languages.base import Phonemizer
from common.languages.sn_g2p import EN_US_ESPEAK_SYMBOLS
from common.metrics import TTS_FIRST_AUDIO_MS, TTS_PHRASES, TTS_RTF
from common.worker import SerialWorker, iterate_in_thread
from tts_worker.engine import TTS

log = logging.getLogger(__name__)


def trained_symbols(config: Any) -> set[str]:
    """The symbols a voice learned. Piper maps hold the whole espeak symbol set, but an
    English voice only ever heard what espeak-ng's English produces: other symbols (ɓ, ɗ, ɲ...)
    sit on untrained embeddings, so a G2P must fall back to the nearest trained one."""
    symbols = set(config.phoneme_id_map)
    if str(getattr(config, "espeak_voice", "")).startswith("en"):
        symbols &= EN_US_ESPEAK_SYMBOLS
    return symbols


class TtsWorker(SerialWorker[SynthesizeRequest]):
    def __init__(self, voice: TTS, frame_ms: int) -> None:
        super().__init__()
        self.voice = voice
        self.frame_ms = frame_ms
        self._phonemizers: dict[str, Phonemizer | None] = {}

    def _phonemizer(self, language: str) -> Phonemizer | None:
        """The session language's G2P onto this voice (None: the voice's own espeak voice)."""
        pack = languages.get(language or "en")
        if pack.code not in self._phonemizers:
            made: Phonemizer | None = None
            config = getattr(self.voice, "config", None)  # a Piper voice: G2P onto its symbols
            if pack.phonemizer is not None and config is not None:
                made = pack.phonemizer(self.voice.phonemizer, trained_symbols(config))
            self._phonemizers[pack.code] = made
        return self._phonemizers[pack.code]

    def warm(self) -> None:
        self.voice.warmup()

    async def process(self, request: SynthesizeRequest) -> None:
        seq = await self._synthesize(request)
        await self._emit(request, seq, b"", final=True)

    async def failed(self, request: SynthesizeRequest) -> None:
        await self._emit(request, 1_000_000, b"", final=True)

    async def _synthesize(self, request: SynthesizeRequest) -> int:
        runtime = self.runtime
        assert runtime is not None
        seq = 0
        if runtime.is_cancelled(request.session_id, request.turn_id):
            return seq
        phonemizer = self._phonemizer(request.language)
        g2p = type(phonemizer).__name__ if phonemizer is not None else "espeak"
        TTS_PHRASES.labels(request.language or "en", g2p).inc()
        frames = iterate_in_thread(
            lambda: self.voice.synthesize_stream(
                request.text, sample_rate=request.sample_rate, frame_ms=self.frame_ms,
                phonemizer=phonemizer,
            )
        )
        started, busy_s = time.perf_counter(), 0.0
        async with contextlib.aclosing(frames):  # closing it stops the synthesis thread
            async for payload in frames:
                busy_s = time.perf_counter() - started  # synthesis time up to this frame
                if seq == 0:
                    TTS_FIRST_AUDIO_MS.observe(busy_s * 1000)
                if runtime.is_cancelled(request.session_id, request.turn_id):
                    break
                await self._emit(request, seq, payload, final=False)
                seq += 1
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
