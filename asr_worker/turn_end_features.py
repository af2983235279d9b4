"""Whisper-style log-mel features in numpy, for the end-of-turn model (Smart Turn v3).

Smart Turn's encoder is Whisper-tiny's, fed 8 s of 16 kHz audio as 80 log-mel bands × 800
frames (its ONNX input is `input_features [batch, 80, 800]`). The recipe is Whisper's own:
a 400-sample periodic Hann window every 160 samples over the reflect-padded signal, the power
spectrum through 80 Slaney-normalised triangular mel filters (0–8 kHz), log10 floored at 1e-10,
clamped to 8 (80 dB) below the clip's peak and mapped by (x + 4) / 4. Smart Turn also normalises
the waveform to zero mean and unit variance first, and keeps the LAST 8 s, zero-padded in front,
so the end of the speech always sits at the same place in the window.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
WINDOW_S = 8
WINDOW_SAMPLES = WINDOW_S * SAMPLE_RATE
FRAMES = WINDOW_SAMPLES // HOP  # 800


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    # Slaney's scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above.
    hz = np.asarray(hz, dtype=np.float64)
    linear = 3.0 * hz / 200.0
    log_step = np.log(6.4) / 27.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / log_step, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), 200.0 * mel / 3.0)


@lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    """(N_FFT // 2 + 1, N_MELS) triangular filters, each scaled to unit area (Slaney norm)."""
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), N_MELS + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (fft_hz[:, None] - lower) / (centre - lower)
    falling = (upper - fft_hz[:, None]) / (upper - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return (triangles * (2.0 / (upper - lower))).astype(np.float32)


@lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    # Periodic (not symmetric) Hann, as torch.hann_window uses for Whisper's STFT.
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)


def last_window(audio: np.ndarray) -> np.ndarray:
    """The last 8 s of `audio`, zeros in front when it is shorter."""
    samples = np.asarray(audio, dtype=np.float32).reshape(-1)[-WINDOW_SAMPLES:]
    return np.pad(samples, (WINDOW_SAMPLES - samples.size, 0))


def log_mel(audio: np.ndarray, *, normalize: bool = True) -> np.ndarray:
    """(N_MELS, len // HOP) Whisper log-mel features of float32 16 kHz audio."""
    samples = np.asarray(audio, dtype=np.float32).reshape(-1)
    if normalize:
        samples = (samples - samples.mean()) / np.sqrt(samples.var() + 1e-7)
    padded = np.pad(samples, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    spectrum = np.abs(np.fft.rfft(frames * _hann(), axis=-1)) ** 2
    mel = spectrum[:-1].astype(np.float32) @ mel_filters()  # Whisper drops the last frame
    logs = np.log10(np.maximum(mel, 1e-10))
    logs = np.maximum(logs, logs.max() - 8.0)
    return ((logs + 4.0) / 4.0).T.astype(np.float32)


def turn_features(audio: np.ndarray) -> np.ndarray:
    """Smart Turn's input for one clip: (1, 80, 800)."""
    return log_mel(last_window(audio))[None, :, :FRAMES]
