"""`INZWA_ASR_ENGINE=fake`: a scripted recogniser for supervision, chaos and lifecycle tests.

No model files, loads at once, deterministic. It sits behind the same stream adapter as the real
engines, with the real webrtcvad, so fixture speech still opens and closes turns; whatever was
said, an utterance with sound in it is heard as `INZWA_FAKE_ASR_TEXT`.
"""

from __future__ import annotations

import numpy as np

from asr_worker.interface import SAMPLE_RATE, FileTranscript, TimedSegment, Transcription
from common.settings import Settings

SILENCE_PEAK = 1e-3  # as the real engine: digital silence says nothing


def create(settings: Settings) -> FakeAsr:
    return FakeAsr(settings.fake_asr_text, default_language=settings.language)


class FakeAsr:
    partials = True  # free: the adapter's partial logic gets exercised too

    def __init__(self, text: str, *, default_language: str = "en") -> None:
        self.text = text
        self.default_language = default_language
        self.calls = 0

    def info(self) -> dict[str, str]:
        return {"name": "fake-asr", "version": "1", "sha256": "", "device": "cpu", "engine": "fake"}

    def warmup(self) -> None:
        self.transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32))

    def _language(self, language: str | None) -> str:
        return self.default_language if language in (None, "", "auto") else str(language)

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcription:
        self.calls += 1
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        if samples.size == 0 or float(np.abs(samples).max()) < SILENCE_PEAK:
            return Transcription("", 0.0, self._language(language))
        return Transcription(self.text, 0.9, self._language(language))

    def transcribe_file(self, audio: np.ndarray, language: str | None = None) -> FileTranscript:
        duration = np.asarray(audio).size / SAMPLE_RATE
        heard = self.transcribe(audio, language)
        segments = [TimedSegment(0.0, round(duration, 3), heard.text, heard.confidence)] if heard.text else []
        return FileTranscript(segments, heard.language, 1.0, duration)
