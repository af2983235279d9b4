"""OpenAI Realtime (`/v1/realtime`) against Inzwa's own WebSocket (`/ws/audio`), same clips, same run.

Both are measured the same way: the clip streamed in real time (PCM16 16 kHz on /ws/audio,
24 kHz base64 appends on /v1/realtime, as OpenAI clients send it), the turn ended by the client
right after the clip (`end_turn` / `input_audio_buffer.commit`), and v2v is the end of speech in
the clip to the first reply audio (the first binary message / `response.output_audio.delta`).
The difference is the cost of the Realtime protocol (24 kHz resampling both ways, base64 and
JSON framing) plus any change the resampled audio makes to the ASR's end-of-turn decision, so
each side also reports v2v less its ASR final (`asr.final` / the input transcription's
`completed`): the part after the end of turn, which is the protocol's own cost.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import websockets

from common.audio import resample_pcm16
from gateway.client import Talker, load_clip, speech_end_s

RATE = 24000
CHUNK = RATE * 2 // 50  # 20 ms of PCM16


Turn = tuple[float | None, float | None]  # (v2v ms, ASR final ms), from the end of speech


async def realtime_turn(http: str, clip: Path, timeout_s: float = 90.0) -> Turn:
    """End of speech to the first response.output_audio.delta and to the input transcription's
    `completed`, in ms (None: none came)."""
    pcm16k = load_clip(clip)
    speech_end = speech_end_s(pcm16k)
    audio = resample_pcm16(pcm16k, 16000, RATE)
    url = http.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    async with websockets.connect(url, max_size=None,
                                  additional_headers={"Authorization": "Bearer bench"}) as ws:
        event = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
        if event.get("type") != "session.created":
            return None, None
        t0 = time.monotonic()
        sender = asyncio.create_task(_send(ws, audio, t0))
        try:
            return await asyncio.wait_for(_first_audio(ws, t0 + speech_end), timeout_s)
        except TimeoutError:
            return None, None
        finally:
            sender.cancel()


async def _send(ws: Any, audio: bytes, t0: float) -> None:
    for index, at in enumerate(range(0, len(audio), CHUNK)):
        delay = t0 + index * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = base64.b64encode(audio[at: at + CHUNK]).decode()
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))


async def _first_audio(ws: Any, speech_end_at: float) -> Turn:
    final = None
    async for message in ws:
        event = json.loads(message)
        kind = event.get("type")
        if kind == "conversation.item.input_audio_transcription.completed" and final is None:
            final = (time.monotonic() - speech_end_at) * 1000
        elif kind == "response.output_audio.delta":
            return (time.monotonic() - speech_end_at) * 1000, final
    return None, final


async def ws_turn(url: str, clip: Path) -> Turn:
    result = await Talker(load_clip(clip), until_first_audio=True).run(url, timeout_s=90)
    return result.v2v_ms, result.asr_final_ms


async def compare(stack: Any, clips: list[Path], rounds: int) -> dict[str, list[Turn]]:
    """One session at a time, each clip alternately over /ws/audio and /v1/realtime."""
    await realtime_turn(stack.http, clips[0])  # warm the path once
    ws: list[Turn] = []
    realtime: list[Turn] = []
    for clip in clips * rounds:
        ws.append(await ws_turn(stack.url, clip))
        realtime.append(await realtime_turn(stack.http, clip))
    return {"websocket": ws, "realtime": realtime}
