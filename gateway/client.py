"""A WebSocket client for /ws/audio: stream a WAV in real time, collect the spoken reply.

Used by `inzwa talk`, the end-to-end tests and the benchmark, so all three measure the same
thing: `v2v_ms` is the time from the end of speech in the file (as streamed in real time) to
the first byte of reply audio.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets

from common.audio import SAMPLE_RATE, frame_bytes, pcm16_to_float, read_wav, resample_pcm16, wav_bytes


def speech_end_s(pcm: bytes, frame_ms: int = 20) -> float:
    """Where the speech in a clip ends: the end of its last frame within 35 dB of the peak."""
    samples = pcm16_to_float(pcm)
    size = SAMPLE_RATE * frame_ms // 1000
    count = len(samples) // size
    if count == 0:
        return 0.0
    frames = samples[: count * size].reshape(count, size)
    levels = 10 * np.log10(np.mean(frames * frames, axis=1) + 1e-12)
    loud = np.nonzero(levels > max(levels.max() - 35.0, -60.0))[0]
    return 0.0 if loud.size == 0 else float((loud[-1] + 1) * frame_ms / 1000)


AUDIBLE_DBFS = -50.0  # a reply frame louder than this is speech (comfort noise is ~-63 dBFS)


def dbfs(pcm: bytes) -> float:
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64) / 32768.0
    return float(10 * np.log10(np.mean(samples * samples) + 1e-12)) if samples.size else -120.0


def load_clip(path: str | Path) -> bytes:
    pcm, rate = read_wav(path)
    return resample_pcm16(pcm, rate)


@dataclass
class TalkResult:
    session_id: str = ""
    transcript: str = ""
    partials: list[str] = field(default_factory=list)
    reply_text: str = ""
    reply_audio: bytearray = field(default_factory=bytearray)
    events: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    v2v_ms: float | None = None
    audible_ms: float | None = None  # end of speech to the first audible reply frame
    asr_final_ms: float | None = None
    first_token_ms: float | None = None
    partial_lags_ms: list[float] = field(default_factory=list)  # receipt - audio time of its end
    metrics: dict[str, Any] = field(default_factory=dict)  # the server's turn.metrics event
    completed: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "transcript": self.transcript,
            "reply_text": self.reply_text,
            "reply_audio_s": round(len(self.reply_audio) / 2 / SAMPLE_RATE, 3),
            "v2v_ms": _round(self.v2v_ms),
            "asr_final_ms": _round(self.asr_final_ms),
            "llm_first_token_ms": _round(self.first_token_ms),
            "partials": len(self.partials),
            "server_metrics": self.metrics,
            "completed": self.completed,
            "errors": self.errors,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class Talker:
    """One spoken turn over one WebSocket connection."""

    def __init__(self, pcm: bytes, *, frame_ms: int = 20, realtime: bool = True,
                 end_turn: bool = True, until_first_audio: bool = False) -> None:
        self.pcm = pcm
        self.until_first_audio = until_first_audio  # benchmarks: the turn's figures are in
        self.frame_ms = frame_ms
        self.realtime = realtime
        self.end_turn = end_turn
        self.speech_end = speech_end_s(pcm)
        self.result = TalkResult()
        self.t0 = 0.0

    async def run(self, url: str, *, language: str = "", timeout_s: float = 60.0,
                  headers: dict[str, str] | None = None) -> TalkResult:
        """One voice turn; `headers` go on the upgrade request (e.g. an Authorization bearer)."""
        async with websockets.connect(url, max_size=None, additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "start", "codec": "pcm16",
                                      "sample_rate": SAMPLE_RATE, "language": language}))
            started = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
            if started.get("type") != "session.started":
                self.result.errors.append(started)
                return self.result
            self.result.session_id = started["session_id"]
            self.t0 = time.monotonic()
            sender = asyncio.create_task(self._send(ws))
            try:
                await asyncio.wait_for(self._receive(ws), timeout_s)
            except TimeoutError:
                self.result.errors.append({"type": "error", "code": "client_timeout"})
            finally:
                sender.cancel()
        return self.result

    async def _send(self, ws: Any) -> None:
        step = frame_bytes(self.frame_ms)
        for index, offset in enumerate(range(0, len(self.pcm), step)):
            if self.realtime:
                delay = self.t0 + index * self.frame_ms / 1000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await ws.send(self.pcm[offset : offset + step])
        if self.end_turn:
            await ws.send(json.dumps({"type": "end_turn"}))

    def _since_speech_end_ms(self) -> float:
        return (time.monotonic() - (self.t0 + self.speech_end)) * 1000

    async def _receive(self, ws: Any) -> None:
        async for message in ws:
            if isinstance(message, bytes):
                if self.result.v2v_ms is None:
                    self.result.v2v_ms = self._since_speech_end_ms()
                if self.result.audible_ms is None and dbfs(message) > AUDIBLE_DBFS:
                    self.result.audible_ms = self._since_speech_end_ms()
                    if self.until_first_audio:  # PCM16 sessions: Opus packets are not samples
                        self.result.completed = True
                        return
                self.result.reply_audio.extend(message)
                continue
            event = json.loads(message)
            self.result.events.append(event)
            if self._on_event(event):
                return

    def _on_event(self, event: dict[str, Any]) -> bool:
        """Record one JSON event; True when the turn is over."""
        kind = event.get("type")
        if kind == "asr.partial":
            self.result.partials.append(event["text"])
            audio_time = self.t0 + event.get("end_ms", 0) / 1000
            self.result.partial_lags_ms.append((time.monotonic() - audio_time) * 1000)
        elif kind == "asr.final":
            self.result.transcript = " ".join(filter(None, [self.result.transcript, event["text"]]))
            self.result.asr_final_ms = self._since_speech_end_ms()
        elif kind == "llm.partial" and self.result.first_token_ms is None:
            self.result.first_token_ms = self._since_speech_end_ms()
        elif kind == "error":
            self.result.errors.append(event)
        elif kind == "tts.end":
            self.result.reply_text = event.get("text", "")
            self.result.completed = True
        elif kind == "turn.metrics" and self.result.completed:
            self.result.metrics = event  # sent right after tts.end: the turn's last event
            return True
        return False


async def talk(path: str | Path, url: str, *, out: str | Path | None = None,
               language: str = "", realtime: bool = True, timeout_s: float = 60.0) -> TalkResult:
    talker = Talker(load_clip(path), realtime=realtime)
    result = await talker.run(url, language=language, timeout_s=timeout_s)
    if out is not None:
        await asyncio.to_thread(Path(out).write_bytes, wav_bytes(bytes(result.reply_audio)))
    return result
