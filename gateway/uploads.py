"""Audio uploads for `/v1/asr`: size-capped reading, WAV or raw PCM16, checks, resampling.

The body is read in chunks and refused as soon as it passes `max_upload_bytes` (a client that
lies in Content-Length, or sends none, cannot make the gateway buffer more than that). Parsing
and resampling run in a worker thread with a capped RIFF chunk walk, so a hostile file cannot
stall the event loop that every other client shares.
"""

from __future__ import annotations

import asyncio

from fastapi import Request

from common.audio import resample_pcm16
from common.frames import TranscribeJob
from common.settings import Settings
from gateway.codec import CodecError, read_upload
from gateway.errors import ApiError
from gateway.media import DECODE_RATE, decode_upload

TARGET_RATE = 16000
UPLOAD_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "upload_too_large", f"the upload is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise ApiError(413, "upload_too_large", f"the upload is over the limit of {limit} bytes")
    return bytes(body)


async def read_audio_upload(request: Request, settings: Settings, raw_rate: int | None) -> TranscribeJob:
    """The upload as a transcription job at 16 kHz; a clear 4xx for anything unusable."""
    data = await read_body(request, settings.max_upload_bytes)
    if not data:
        raise ApiError(422, "empty_audio", "the upload is empty")
    try:
        pcm, rate = await asyncio.to_thread(read_upload, data, raw_rate, settings.max_wav_chunks)
    except CodecError as exc:
        raise ApiError(415, "unsupported_audio", str(exc)) from None
    if rate not in UPLOAD_RATES:
        raise ApiError(422, "unsupported_sample_rate",
                       f"sample rate {rate} Hz is not supported; use one of {UPLOAD_RATES}")
    seconds = len(pcm) / 2 / rate
    if seconds > settings.max_audio_seconds:
        raise ApiError(413, "audio_too_long",
                       f"the audio is {seconds:.1f} s; the limit is {settings.max_audio_seconds:g} s")
    if seconds < 0.1:
        raise ApiError(422, "audio_too_short", "the audio is shorter than 0.1 s")
    return TranscribeJob(pcm=await asyncio.to_thread(resample_pcm16, pcm, rate, TARGET_RATE))


async def decode_recording(data: bytes, max_seconds: float, empty: str) -> bytes:
    """Any recording PyAV reads (WAV, WebM/Opus, Ogg/Opus, MP3, M4A) as PCM16 mono 16 kHz, off
    the event loop; `empty` is the message for an empty upload (each route names its field)."""
    if not data:
        raise ApiError(422, "empty_audio", empty)
    try:
        pcm = await asyncio.to_thread(decode_upload, data, max_seconds)
    except CodecError as exc:
        status = 413 if "longer than" in str(exc) else 415
        raise ApiError(status, "audio_too_long" if status == 413 else "unsupported_audio", str(exc)) from None
    if len(pcm) < DECODE_RATE * 2 // 10:
        raise ApiError(422, "audio_too_short", "the audio is shorter than 0.1 s")
    return pcm
