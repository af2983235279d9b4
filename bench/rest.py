"""REST latencies for `make bench`: first SSE token, first TTS audio byte (cold: a text never
synthesized; and cold against cached, the audio cache), an ASR upload."""

from __future__ import annotations

import time
import uuid
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


def tts_first_audio_ms(client: httpx.Client, fmt: str, text: str = TTS_TEXT) -> tuple[float, float]:
    start, first, received = time.perf_counter(), None, 0
    with client.stream("POST", "/v1/tts", json={"text": text, "format": fmt}) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            received += len(chunk)
            if first is None and received > (WAV_HEADER if fmt == "wav" else 200):
                first = _ms(start)
    return first or float("nan"), _ms(start)


def never_seen(index: int) -> str:
    """A text no TTS worker has synthesized (its audio cache cannot answer it): cold."""
    return f"{TTS_TEXT} Visitor {uuid.uuid4().int % 10**6} arrives at gate {index}."


def tts_cache_figures(client: httpx.Client, repeats: int = 5) -> dict[str, Any]:
    """/v1/tts first audio byte for texts never seen (cold: synthesized) against the same texts
    asked again (cached: the audio cache's frames), and the ratio of the medians (issue 13's
    target: >= 10x)."""
    cold, cached = [], []
    for index in range(repeats):
        text = never_seen(index)
        cold.append(tts_first_audio_ms(client, "wav", text)[0])
        cached.append(tts_first_audio_ms(client, "wav", text)[0])
    cold_p50, cached_p50 = float(np.median(cold)), float(np.median(cached))
    return {"cold_first_audio_ms": {"p50": round(cold_p50, 1), "n": len(cold)},
            "cached_first_audio_ms": {"p50": round(cached_p50, 1), "n": len(cached)},
            "ratio_p50": round(cold_p50 / cached_p50, 1) if cached_p50 > 0 else None}


def asr_upload_ms(client: httpx.Client, clip: Path) -> float:
    start = time.perf_counter()
    response = client.post("/v1/asr", content=clip.read_bytes(), headers={"content-type": "audio/wav"})
    response.raise_for_status()
    return _ms(start)


def rest_figures(base_url: str, clip: Path, repeats: int = 5) -> dict[str, Any]:
    rows: dict[str, list[float]] = {}
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for index in range(repeats):
            # a new text every time: the same one again would be answered by the audio cache
            runs = {"chat_first_token_ms": chat_first_token_ms(client),
                    "tts_wav_first_audio_ms": tts_first_audio_ms(client, "wav", never_seen(index)),
                    "tts_opus_first_audio_ms": tts_first_audio_ms(client, "opus", never_seen(index))}
            for name, (first, total) in runs.items():
                rows.setdefault(name, []).append(first)
                rows.setdefault(name.rsplit("_", 3)[0] + "_total_ms", []).append(total)
            rows.setdefault("asr_upload_ms", []).append(asr_upload_ms(client, clip))
    return {name: {"p50": round(float(np.median(values)), 1), "n": len(values)}
            for name, values in rows.items()}


def cache_figures(base_url: str, repeats: int = 5) -> dict[str, Any]:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        return tts_cache_figures(client, repeats)
