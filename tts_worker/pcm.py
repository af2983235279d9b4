"""Turning an engine's audio into the worker's frames: exact frame sizes, any output rate."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import soxr

from common.audio import float_to_pcm16, frame_bytes


class FrameBuffer:
    """Cuts a PCM16 byte stream into frames of exactly `size` bytes."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"frame size must be positive, got {size}")
        self.size = size
        self._pending = bytearray()

    def push(self, pcm: bytes) -> Iterator[bytes]:
        self._pending += pcm
        whole = len(self._pending) - len(self._pending) % self.size
        for start in range(0, whole, self.size):
            yield bytes(self._pending[start : start + self.size])
        del self._pending[:whole]

    def flush(self) -> Iterator[bytes]:
        """The remainder zero-padded to a whole frame (nothing when there is none)."""
        if self._pending:
            yield bytes(self._pending) + bytes(self.size - len(self._pending))
            self._pending.clear()


class Framer:
    """Float audio at the engine's rate in, PCM16 frames at the requested rate out; one
    resampling stream for the whole text, so there are no edge effects between chunks."""

    def __init__(self, native_rate: int, sample_rate: int, frame_ms: int) -> None:
        self._frames = FrameBuffer(frame_bytes(frame_ms, sample_rate))
        self._resampler = None
        if native_rate != sample_rate:
            self._resampler = soxr.ResampleStream(native_rate, sample_rate, 1, dtype="float32")

    def push(self, audio: np.ndarray) -> Iterator[bytes]:
        if self._resampler is not None:
            audio = self._resampler.resample_chunk(np.asarray(audio, dtype=np.float32))
        yield from self._frames.push(float_to_pcm16(audio))

    def flush(self) -> Iterator[bytes]:
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            yield from self._frames.push(float_to_pcm16(tail))
        yield from self._frames.flush()
