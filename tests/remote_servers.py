"""Real servers for the remote engines' tests, on 127.0.0.1, stopped on their own.

- `LlamaServer`: llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`,
  a third-party server) with the SmolLM2 GGUF, as a subprocess that can be killed and restarted
  on the same port.
- `SpeechServer`: no third-party OpenAI-compatible ASR/TTS server installs from PyPI here, so
  this is a small FastAPI app in a thread that runs the REAL faster-whisper model and the REAL
  Piper voice behind `/v1/audio/transcriptions` and `/v1/audio/speech` (streamed).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI, Form, UploadFile
from fastapi.responses import StreamingResponse

from tests.loopback import LOOPBACK
from tests.stack import free_port

START_TIMEOUT_S = 120.0


class LlamaServer:
    def __init__(self, model: Path, log_path: Path, *, port: int | None = None) -> None:
        self.model = model
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        # interrupt_requests off: by default a waiting request cuts the running one short,
        # which would turn N concurrent requests into N-1 truncated replies.
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model),
                   "--host", "127.0.0.1", "--port", str(self.port), "--n_threads", "1",
                   "--n_ctx", "2048", "--seed", "0", "--interrupt_requests", "False"]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited:\n{self.log()}")
            try:
                if LOOPBACK.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"llama_cpp.server not up after {START_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL, as a crashed GPU box would go."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def _wav_header(sample_rate: int) -> bytes:
    """A WAV header for a stream of unknown length (sizes 0xFFFFFFFF, as streaming servers do)."""
    return (b"RIFF" + b"\xff\xff\xff\xff" + b"WAVE" + b"fmt " + (16).to_bytes(4, "little")
            + (1).to_bytes(2, "little") + (1).to_bytes(2, "little")
            + sample_rate.to_bytes(4, "little") + (sample_rate * 2).to_bytes(4, "little")
            + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
            + b"data" + b"\xff\xff\xff\xff")


_LANGUAGE_NAMES = {"en": "english", "sn": "shona"}  # OpenAI's verbose_json names the language


class SpeechServer:
    """The real faster-whisper model and Piper voice behind OpenAI's audio routes, served by
    uvicorn in a thread on 127.0.0.1. `requests` records what each route was sent;
    `speaking` is True while a speech response is still being produced."""

    def __init__(self, asr: Any, voice: Any) -> None:
        self.asr, self.voice = asr, voice
        self.port = free_port()
        self.requests: list[dict[str, Any]] = []
        self.speaking = False
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/audio/transcriptions")
        def transcriptions(file: UploadFile, model: str = Form(...), language: str | None = Form(None),
                           response_format: str = Form("json")) -> dict[str, Any]:
            with wave.open(io.BytesIO(file.file.read())) as wav:
                rate, pcm = wav.getframerate(), wav.readframes(wav.getnframes())
            self.requests.append({"route": "transcriptions", "model": model, "language": language,
                                  "rate": rate, "format": response_format})
            audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
            result = self.asr.transcribe_file(audio, language)
            body: dict[str, Any] = {"text": result.text}
            if response_format == "verbose_json":
                body.update(language=_LANGUAGE_NAMES.get(result.language, result.language),
                            duration=result.duration_s, segments=[
                                {"start": s.start_s, "end": s.end_s, "text": s.text,
                                 "avg_logprob": float(np.log(max(s.confidence, 1e-6)))}
                                for s in result.segments])
            return body

        @app.post("/v1/audio/speech")
        def speech(body: dict[str, Any]) -> StreamingResponse:
            self.requests.append({"route": "speech", **body})
            fmt = body.get("response_format", "mp3")
            return StreamingResponse(self._speak(str(body["input"]), fmt == "wav"),
                                     media_type="audio/wav" if fmt == "wav" else "audio/pcm")

        return app

    def _speak(self, text: str, wav: bool) -> Iterator[bytes]:
        """The voice's native-rate PCM16, sentence by sentence, as it is made."""
        self.speaking = True
        try:
            if wav:
                yield _wav_header(self.voice.sample_rate)
            yield from self.voice.synthesize_stream(text, sample_rate=self.voice.sample_rate,
                                                    frame_ms=100)
        finally:
            self.speaking = False

    def start(self) -> None:
        import uvicorn

        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="speech-server")
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the speech test server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
