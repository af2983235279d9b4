"""REST latencies for `make bench`: first SSE token, first TTS audio byte, an ASR upload."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

TTS_TEXT = ("Harare is the capital city of Zimbabwe. It is a busy place with wide streets. "
            "The weather is usually mild.")
WAV_HEADER = 44


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def chat_first_token_ms(client: httpx.Client) -> tuple[float, float]:
    body = {"messages": [{"role": "user", "content": "Name three colours."}], "stream": True}
    start, first = time.perf_counter(), None
    with client.stream("POST", "/v1/chat", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and line.startswith("event: token"):
                first = _ms(start)
    return first or float("nan"), _ms(start)


def tts_first_audio_ms(client: httpx.Client, fmt: str) -> tuple[float, float]:
    start, first, received = time.perf_counter(), None, 0
    with client.stream("POST", "/v1/tts", json={"text": TTS_TEXT, "format": fmt}) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            received += len(chunk)
            if first is None and received > (WAV_HEADER if fmt == "wav" else 200):
                first = _ms(start)
    return first or float("nan"), _ms(start)


def asr_upload_ms(client: httpx.Client, clip: Path) -> float:
    start = time.perf_counter()
    response = client.post("/v1/asr", content=clip.read_bytes(), headers={"content-type": "audio/wav"})
    response.raise_for_status()
    return _ms(start)


def rest_figures(base_url: str, clip: Path, repeats: int = 5) -> dict[str, Any]:
    rows: dict[str, list[float]] = {}
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for _ in range(repeats):
            for name, (first, total) in (("chat_first_token_ms", chat_first_token_ms(client)),
                                         ("tts_wav_first_audio_ms", tts_first_audio_ms(client, "wav")),
                                         ("tts_opus_first_audio_ms", tts_first_audio_ms(client, "opus"))):
                rows.setdefault(name, []).append(first)
                rows.setdefault(name.rsplit("_", 3)[0] + "_total_ms", []).append(total)
            rows.setdefault("asr_upload_ms", []).append(asr_upload_ms(client, clip))
    return {name: {"p50": round(float(np.median(values)), 1), "n": len(values)}
            for name, values in rows.items()}
