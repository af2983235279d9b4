"""`INZWA_TTS_ENGINE=openai`: any OpenAI-compatible `POST /v1/audio/speech` server, its audio
streamed as it arrives and resampled to the rate the session asked for.

`INZWA_TTS_REMOTE_FORMAT=pcm` asks for raw PCM16 mono (OpenAI's `pcm` format: 24 kHz, or
`INZWA_TTS_REMOTE_SAMPLE_RATE`); `wav` reads the rate from the WAV header as the body streams in
(a streamed WAV's sizes are unknown, so only the header's `fmt ` and the start of `data` count).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx

from common.audio import pcm16_to_float
from common.logs import content
from common.settings import Settings
from tts_worker.pcm import Framer

MAX_HEADER = 4096  # a WAV header larger than this is not one we can stream


def create(settings: Settings) -> OpenAITts:
    if not settings.tts_remote_url:
        raise ValueError("INZWA_TTS_ENGINE=openai needs INZWA_TTS_REMOTE_URL (e.g. http://host:8000/v1)")
    return OpenAITts(settings.tts_remote_url, model=settings.tts_remote_model,
                     voice=settings.tts_remote_voice, api_key=settings.tts_remote_api_key,
                     timeout_s=settings.tts_remote_timeout_s, response_format=settings.tts_remote_format,
                     pcm_rate=settings.tts_remote_sample_rate)


def wav_data_start(head: bytes) -> tuple[int, int] | None:
    """(sample rate, offset of the PCM16 samples) once `head` holds a whole WAV header; None
    while more bytes are needed. Raises on a WAV that is not PCM16 mono."""
    if len(head) < 12:
        return None
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise ValueError("the speech server's body is not a WAV")
    offset, rate = 12, 0
    while offset + 8 <= len(head):
        kind, size = head[offset : offset + 4], struct.unpack("<I", head[offset + 4 : offset + 8])[0]
        if kind == b"data":
            return (rate, offset + 8) if rate else None
        if kind == b"fmt ":
            if offset + 24 > len(head):
                return None
            fmt, channels, rate = struct.unpack("<HHI", head[offset + 8 : offset + 16])
            bits = struct.unpack("<H", head[offset + 22 : offset + 24])[0]
            if fmt != 1 or channels != 1 or bits != 16:
                raise ValueError("the speech server's WAV is not PCM16 mono")
        offset += 8 + size + size % 2
    return None


class OpenAITts:
    def __init__(self, base_url: str, *, model: str = "tts-1", voice: str = "alloy", api_key: str = "",
                 timeout_s: float = 30.0, response_format: str = "pcm", pcm_rate: int = 24000,
                 retries: int = 2) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=base_url.rstrip("/") + "/", headers=headers,
                                    timeout=timeout_s, transport=httpx.HTTPTransport(retries=retries))
        self.model, self.voice = model, voice
        self.response_format, self.pcm_rate = response_format, pcm_rate
        self._host = urlsplit(base_url).netloc

    def info(self) -> dict[str, str]:
        return {"name": self.model, "version": "remote", "sha256": "", "device": f"remote:{self._host}",
                "engine": "openai"}

    def warmup(self) -> None:
        for _ in self.synthesize_stream("Hello."):
            pass

    speeds = True  # OpenAI's speech API takes `speed` (0.25..4.0); passed on as it is

    def synthesize_stream(
        self, text: str, *, sample_rate: int = 16000, frame_ms: int = 20, language: str = "",
        speed: float = 1.0,
    ) -> Iterator[bytes]:
        if not text.strip():
            return
        body: dict[str, object] = {"model": self.model, "input": text, "voice": self.voice,
                                   "response_format": self.response_format}
        if speed != 1.0:
            body["speed"] = speed
        with self._client.stream("POST", "audio/speech", json=body) as response:
            if response.status_code >= 400:
                detail = response.read().decode(errors="replace")[:200]
                # the server's error text may quote the input: kept out of logs unless allowed
                raise RuntimeError(f"speech server: HTTP {response.status_code}: {content(detail)}")
            yield from self._frames(response.iter_bytes(), sample_rate, frame_ms)

    def _frames(self, chunks: Iterator[bytes], sample_rate: int, frame_ms: int) -> Iterator[bytes]:
        pending, framer = b"", None
        if self.response_format == "pcm":
            framer = Framer(self.pcm_rate, sample_rate, frame_ms)
        for chunk in chunks:
            pending += chunk
            if framer is None:  # still reading the WAV header
                found = wav_data_start(pending)
                if found is None:
                    if len(pending) > MAX_HEADER:
                        raise ValueError("no WAV data chunk in the speech server's first 4 KiB")
                    continue
                framer, pending = Framer(found[0], sample_rate, frame_ms), pending[found[1]:]
            usable = len(pending) - len(pending) % 2  # whole samples only; the odd byte waits
            if usable:
                yield from framer.push(pcm16_to_float(pending[:usable]))
                pending = pending[usable:]
        if framer is not None:
            yield from framer.flush()



