"""WebRTC audio on both ends of a peer connection (aiortc media tracks, PyAV frames, soxr).

- `Downsampler`: the frames aiortc decodes from the client's Opus (48 kHz, stereo s16 in
  aiortc 1.16; anything PyAV gives is accepted) to the pipeline's PCM16 mono 16 kHz, through
  one streaming soxr resampler per track so 20 ms chunk edges do not click.

Where WebRTC's extra latency goes (aiortc 1.16, measured on loopback, one way ~60 ms with a
1-frame jitter buffer, ~130 ms with aiortc's default 4): the 20 ms frame itself and its pacing,
aiortc's encoder resampler holding one 20 ms frame (swresample with frame_size=960), Opus's
look-ahead, and the receiver's jitter buffer (see rtc_peer._shorten_jitter_buffers).
- `PcmTrack`: an audio track that plays queued PCM16 mono 16 kHz in real time, 20 ms per
  frame, silence when nothing is queued (a WebRTC track never pauses). Callbacks queued between
  audio run once the audio before them has gone out: that is when a phrase was heard. aiortc
  encodes each frame to Opus (resampling to 48 kHz itself). The server's reply track and the
  Python client's microphone (tests, bench) are both this class.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Awaitable, Callable

import av
import numpy as np
import soxr
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

RATE = 16000
FRAME_SAMPLES = RATE // 50  # 20 ms
FRAME_BYTES = FRAME_SAMPLES * 2
TIME_BASE = fractions.Fraction(1, RATE)

Action = Callable[[], Awaitable[None]]


def frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """A decoded frame's samples as mono int16 (channels averaged)."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        samples = data.reshape(channels, -1).mean(axis=0) if channels > 1 else data[0]
    else:  # packed: one row of interleaved samples
        samples = data[0].reshape(-1, channels).mean(axis=1) if channels > 1 else data[0]
    if np.issubdtype(samples.dtype, np.floating) and frame.format.name.startswith(("flt", "dbl")):
        return (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
    return np.asarray(samples).astype(np.int16)


class Downsampler:
    """Decoded frames in, PCM16 mono 16 kHz bytes out."""

    def __init__(self) -> None:
        self._stream: soxr.ResampleStream | None = None
        self._rate = 0

    def convert(self, frame: av.AudioFrame) -> bytes:
        samples = frame_to_mono(frame)
        if frame.sample_rate == RATE:
            return samples.astype("<i2").tobytes()
        if self._stream is None or frame.sample_rate != self._rate:
            self._rate = frame.sample_rate
            # LQ, not HQ: HQ emits in blocks, holding 20 ms chunks back about half the time
            # (measured: 0/490/0/489 samples out per 20 ms in), LQ passes each chunk on at once.
            # Its passband ends near 6.5 kHz, which speech recognition at 16 kHz does not miss.
            self._stream = soxr.ResampleStream(self._rate, RATE, 1, dtype="int16", quality="LQ")
        return self._stream.resample_chunk(samples).astype("<i2").tobytes()


class PcmTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._items: deque[bytes | Action] = deque()
        self._due: asyncio.Queue[Action] = asyncio.Queue()
        self._start = 0.0
        self._pts = 0
        self.frames_sent = 0
        self.audio_queued = 0  # bytes of PCM waiting

    def push(self, pcm: bytes) -> None:
        if pcm:
            self._items.append(pcm)
            self.audio_queued += len(pcm)

    def mark(self, action: Action) -> None:
        """Run `action` once everything pushed so far has been played out."""
        self._items.append(action)
        if not self.audio_queued:
            self._fire_marks()

    def clear(self) -> None:
        """Drop queued audio, and the callbacks that waited for it (it will not be heard)."""
        self._items.clear()
        self.audio_queued = 0

    async def next_due(self) -> Action:
        """The next callback whose audio has gone out (one task runs them, in order)."""
        return await self._due.get()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._pts == 0:
            self._start = time.monotonic()
        else:  # real time: frame n leaves at start + n * 20 ms
            await asyncio.sleep(max(0.0, self._start + self._pts / RATE - time.monotonic()))
        chunk = self._take(FRAME_BYTES)
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(chunk, dtype="<i2").reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = TIME_BASE
        self._pts += FRAME_SAMPLES
        self.frames_sent += 1
        return frame

    def _take(self, size: int) -> bytes:
        out = bytearray()
        self._fire_marks()
        while len(out) < size and self._items and isinstance(self._items[0], bytes):
            head = self._items.popleft()
            assert isinstance(head, bytes)
            need = size - len(out)
            out += head[:need]
            if len(head) > need:
                self._items.appendleft(head[need:])
            self._fire_marks()
        self.audio_queued -= len(out)
        return bytes(out) + b"\0" * (size - len(out))

    def _fire_marks(self) -> None:
        while self._items and not isinstance(self._items[0], bytes):
            action = self._items.popleft()
            assert not isinstance(action, bytes)
            self._due.put_nowait(action)
