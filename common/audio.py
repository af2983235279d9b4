"""PCM16 and WAV helpers shared by the gateway, its client and the audio workers."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
BYTES_PER_SAMPLE = 2


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(audio: np.ndarray) -> bytes:
    clipped = np.clip(audio, -1.0, 1.0)
    return (clipped * 32767.0).astype("<i2").tobytes()


def resample_pcm16(pcm: bytes, rate: int, target: int = SAMPLE_RATE) -> bytes:
    """Whole-clip PCM16 resampling (uploads, fixture clips); streams use soxr.ResampleStream."""
    if rate == target:
        return pcm
    import soxr

    return float_to_pcm16(soxr.resample(pcm16_to_float(pcm), rate, target))


def frame_bytes(ms: int, sample_rate: int = SAMPLE_RATE) -> int:
    return sample_rate * ms // 1000 * BYTES_PER_SAMPLE


def read_wav(path: str | Path) -> tuple[bytes, int]:
    """PCM16 mono frames and the sample rate of a WAV file; other layouts are an error."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != BYTES_PER_SAMPLE or wav.getnchannels() != 1:
            raise ValueError(f"{path}: need 16-bit mono WAV")
        return wav.readframes(wav.getnframes()), wav.getframerate()


def wav_bytes(pcm: bytes, sample_rate: int = SAMPLE_RATE) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(BYTES_PER_SAMPLE)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
    return buffer.getvalue()


def rms_dbfs(pcm: bytes) -> float:
    samples = pcm16_to_float(pcm)
    if samples.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(samples * samples)))
    return 20.0 * np.log10(max(rms, 1e-6))
