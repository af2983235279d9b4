"""`INZWA_ASR_ENGINE=openai`: any OpenAI-compatible `POST /v1/audio/transcriptions` server
(OpenAI, vLLM's Whisper, speaches, whisper.cpp's server) for finals.

Partials are skipped (`partials = False`): re-sending the growing utterance three times a second
would multiply the remote load for text the final replaces anyway. The local VAD still decides
turns, and pauses (early replies) and finals each cost one request. Audio goes as a 16 kHz mono
WAV in a multipart form, the answer is `verbose_json` (text, language, segments with
`avg_logprob`), which the reference servers all speak.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from asr_worker.interface import SAMPLE_RATE, FileTranscript, TimedSegment, Transcription
from common.audio import float_to_pcm16, wav_bytes
from common.settings import Settings

SILENCE_PEAK = 1e-3  # digital silence: nothing to send


def create(settings: Settings) -> OpenAIAsr:
    if not settings.asr_remote_url:
        raise ValueError("INZWA_ASR_ENGINE=openai needs INZWA_ASR_REMOTE_URL (e.g. http://host:8000/v1)")
    return OpenAIAsr(settings.asr_remote_url, model=settings.asr_remote_model,
                     api_key=settings.asr_remote_api_key, timeout_s=settings.asr_remote_timeout_s,
                     default_language=settings.language)


def _confidence(segments: list[dict[str, Any]]) -> float:
    logprobs = [float(s["avg_logprob"]) for s in segments if "avg_logprob" in s]
    return min(1.0, math.exp(sum(logprobs) / len(logprobs))) if logprobs else 1.0


class OpenAIAsr:
    partials = False

    def __init__(self, base_url: str, *, model: str, api_key: str = "", timeout_s: float = 30.0,
                 retries: int = 2, default_language: str = "en") -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # One client (one connection pool) for the worker's threads; connect errors are retried.
        self._client = httpx.Client(base_url=base_url.rstrip("/") + "/", headers=headers,
                                    timeout=timeout_s, transport=httpx.HTTPTransport(retries=retries))
        self.model = model
        self.default_language = default_language
        self._host = urlsplit(base_url).netloc

    def info(self) -> dict[str, str]:
        return {"name": self.model, "version": "remote", "sha256": "", "device": f"remote:{self._host}",
                "engine": "openai"}

    def warmup(self) -> None:
        """One request with a short tone: the worker says READY only when the server answers."""
        tone = 0.1 * np.sin(np.arange(SAMPLE_RATE // 2) * 2 * np.pi * 440 / SAMPLE_RATE)
        self._request(tone.astype(np.float32), "en")

    def _request(self, audio: np.ndarray, language: str | None) -> dict[str, Any]:
        form = {"model": self.model, "response_format": "verbose_json"}
        if language and language != "auto":
            form["language"] = language
        wav = wav_bytes(float_to_pcm16(audio))
        response = self._client.post("audio/transcriptions", data=form,
                                     files={"file": ("audio.wav", wav, "audio/wav")})
        response.raise_for_status()
        body = response.json()
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise ValueError("the transcription server answered without a text field")
        return body

    def _language(self, body: dict[str, Any], language: str | None) -> str:
        code = body.get("language") or (language if language not in (None, "", "auto") else "")
        return _code(str(code or self.default_language))

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcription:
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        if samples.size == 0 or float(np.abs(samples).max()) < SILENCE_PEAK:
            return Transcription("", 0.0, self._language({}, language))
        body = self._request(samples, language)
        text = body["text"].strip()
        confidence = _confidence(body.get("segments") or []) if text else 0.0
        return Transcription(text, confidence, self._language(body, language))

    def transcribe_file(self, audio: np.ndarray, language: str | None = None) -> FileTranscript:
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        body = self._request(samples, language)
        segments = [TimedSegment(round(float(s.get("start", 0.0)), 3), round(float(s.get("end", 0.0)), 3),
                                 str(s.get("text", "")).strip(), _confidence([s]))
                    for s in body.get("segments") or []]
        if not segments and body["text"].strip():  # a server that gives no segments
            segments = [TimedSegment(0.0, samples.size / SAMPLE_RATE, body["text"].strip(), 1.0)]
        return FileTranscript(segments, self._language(body, language), 1.0, samples.size / SAMPLE_RATE)


_NAMES = {"english": "en", "shona": "sn", "swahili": "sw"}


def _code(language: str) -> str:
    """OpenAI's verbose_json names the language ("english"); the packs use ISO codes."""
    return _NAMES.get(language.lower(), language.lower())
