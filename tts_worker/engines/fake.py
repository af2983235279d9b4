"""`INZWA_TTS_ENGINE=fake`: a scripted voice for supervision, chaos and lifecycle tests.

No model files, loads at once, deterministic. Speaks a real, non-silent waveform (a 220 Hz tone
in syllable-like bursts) whose length is proportional to the text (`INZWA_FAKE_TTS_MS_PER_CHAR`),
produced at a real-time factor of `INZWA_FAKE_TTS_RTF` (0.05: 1 s of audio takes 50 ms).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from common.settings import Settings
from tts_worker.pcm import Framer

NATIVE_RATE = 22050  # not 16 kHz, so the resampling path is exercised as with Piper
CHUNK_S = 0.2  # audio made (and paced) per step
TONE_HZ = 220.0
SYLLABLE_HZ = 4.0  # bursts per second, like syllables


def create(settings: Settings) -> FakeTts:
    return FakeTts(ms_per_char=settings.fake_tts_ms_per_char, rtf=settings.fake_tts_rtf)


class FakeTts:
    speeds = True  # a per-request speaking rate: the audio is 1/speed as long

    def __init__(self, *, ms_per_char: int = 60, rtf: float = 0.05) -> None:
        self.ms_per_char = ms_per_char
        self.rtf = rtf

    def info(self) -> dict[str, str]:
        return {"name": "fake-tts", "version": "1", "sha256": "", "device": "cpu", "engine": "fake"}

    def warmup(self) -> None:
        for _ in self.synthesize_stream("Hello."):
            pass

    def duration_s(self, text: str) -> float:
        return len(text.strip()) * self.ms_per_char / 1000

    def _chunk(self, start: int, count: int) -> np.ndarray:
        t = (start + np.arange(count)) / NATIVE_RATE
        envelope = 0.5 * (1 - np.cos(2 * np.pi * SYLLABLE_HZ * t))  # 0..1 bursts
        return (0.3 * envelope * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)

    def synthesize_stream(
        self, text: str, *, sample_rate: int = 16000, frame_ms: int = 20, language: str = "",
        speed: float = 1.0,
    ) -> Iterator[bytes]:
        total = int(self.duration_s(text) / speed * NATIVE_RATE)
        framer = Framer(NATIVE_RATE, sample_rate, frame_ms)
        step = int(CHUNK_S * NATIVE_RATE)
        for start in range(0, total, step):
            count = min(step, total - start)
            time.sleep(count / NATIVE_RATE * self.rtf)  # "synthesis" at the configured RTF
            yield from framer.push(self._chunk(start, count))
        if total:
            yield from framer.flush()
