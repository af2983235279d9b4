"""Real servers for the remote engines' tests, on 127.0.0.1, stopped on their own.

- `LlamaServer`: llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`,
  a third-party server) with the SmolLM2 GGUF, as a subprocess that can be killed and restarted
  on the same port.
- `SpeechServer`: no third-party OpenAI-compatible ASR/TTS server installs from PyPI here, so
  this is a small FastAPI app in a thread that runs the REAL faster-whisper model and the REAL
  Piper voice behind `/v1/audio/transcriptions` and `/v1/audio/speech` (streamed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

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
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
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
