"""Audio formats of the OpenAI-compatible routes: uploads in any container, replies in any codec.

Everything behind the gateway is PCM16 mono 16 kHz (`common.audio`); OpenAI clients send what
browsers and phones record (WebM/Opus, Ogg/Opus, MP3, M4A, WAV) and expect 24 kHz PCM16, G.711
at 8 kHz, or a compressed file back. This module is where those meet:

* `decode_upload`: any container/codec FFmpeg (PyAV) reads, to 16 kHz PCM16, with the decoded
  length capped while decoding (a small, highly compressed file cannot expand without bound).
* `SpeechEncoder`: streamed wav / pcm / opus / mp3 / flac / aac for `/v1/audio/speech`; each
  `write` returns the bytes ready so far, so a response starts after the first phrase.
* G.711 mu-law / A-law by table (Python 3.13 dropped `audioop`), and `StreamResampler`, a
  soxr stream per direction and connection so chunk edges do not click.

None of the classes are thread-safe: each belongs to one request or one connection.
"""

from __future__ import annotations

import io
from typing import Any

import av
import numpy as np
import soxr

from common.audio import SAMPLE_RATE
from gateway.codec import CodecError, OggOpusWriter, wav_header

DECODE_RATE = SAMPLE_RATE
SPEECH_FORMATS = ("wav", "pcm", "opus", "mp3", "flac", "aac")
MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "opus": "audio/ogg", "mp3": "audio/mpeg",
               "flac": "audio/flac", "aac": "audio/aac"}
# (container, codec, sample format) for the formats FFmpeg encodes frame by frame here.
_ENCODERS = {"mp3": ("mp3", "libmp3lame", "s16p"), "flac": ("flac", "flac", "s16"),
             "aac": ("adts", "aac", "fltp")}
_MAX_STREAMS = 16  # a file claiming more audio streams than this is not a recording


# --- decoding uploads ----------------------------------------------------------------------------

def decode_upload(data: bytes, max_seconds: float) -> bytes:
    """The first audio stream of `data` as PCM16 mono at 16 kHz; CodecError when unreadable or
    longer than `max_seconds` (stopped as soon as it is, not after decoding everything)."""
    try:
        container = av.open(io.BytesIO(data), "r")
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise CodecError(f"not an audio file FFmpeg can read: {exc}") from None
    try:
        return _decode_stream(container, max_seconds)
    except av.FFmpegError as exc:
        raise CodecError(f"undecodable audio: {exc}") from None
    finally:
        container.close()


def _decode_stream(container: Any, max_seconds: float) -> bytes:
    streams = list(container.streams.audio)[:_MAX_STREAMS]
    if not streams:
        raise CodecError("the file has no audio stream")
    resampler = av.AudioResampler(format="s16", layout="mono", rate=DECODE_RATE)
    limit = int(max_seconds * DECODE_RATE) * 2
    out = bytearray()
    for frame in container.decode(streams[0]):
        for piece in resampler.resample(frame):
            out += _frame_bytes(piece)
        if len(out) > limit:
            raise CodecError(f"the audio is longer than {max_seconds:g} s")
    for piece in resampler.resample(None):
        out += _frame_bytes(piece)
    if len(out) > limit:
        raise CodecError(f"the audio is longer than {max_seconds:g} s")
    return bytes(out)


def _frame_bytes(frame: Any) -> bytes:
    # A plane may be padded past its samples: take exactly samples x 2 bytes.
    return bytes(frame.planes[0])[: frame.samples * 2]


# --- encoding replies ----------------------------------------------------------------------------

class _Sink:
    """Write-only file for the muxer; no `seek`, so FFmpeg writes a stream."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out


class _FFmpegWriter:
    """mp3 / flac / aac, frame by frame: PCM16 in, whatever the muxer has flushed out."""

    def __init__(self, fmt: str, rate: int) -> None:
        container_format, codec, sample_format = _ENCODERS[fmt]
        self.sink = _Sink()
        self.container = av.open(self.sink, "w", format=container_format,
                                 container_options={"flush_packets": "1"})
        self.stream: Any = self.container.add_stream(codec, rate=rate)
        context: Any = self.stream.codec_context
        context.layout = "mono"
        context.format = sample_format
        self.rate = rate
        self.fifo = av.AudioFifo()
        self.resampler = av.AudioResampler(format=sample_format, layout="mono", rate=rate)
        self.pts = 0

    def write(self, pcm: bytes) -> bytes:
        samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").reshape(1, -1)
        if samples.size:
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = self.rate
            frame.pts = self.pts
            self.pts += samples.shape[1]
            self.fifo.write(frame)
        self._drain(final=False)
        return self.sink.take()

    def close(self) -> bytes:
        self._drain(final=True)
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()
        return self.sink.take()

    def _drain(self, *, final: bool) -> None:
        size = self.stream.codec_context.frame_size or 1024  # 0: the codec takes any size
        while self.fifo.samples >= size or (final and self.fifo.samples):
            frame = self.fifo.read(min(size, self.fifo.samples))
            for converted in self.resampler.resample(frame):
                for packet in self.stream.encode(converted):
                    self.container.mux(packet)


class SpeechEncoder:
    """One reply in one of SPEECH_FORMATS, streamed: `write(pcm)` then `close()`."""

    def __init__(self, fmt: str, rate: int, bitrate: int = 32000) -> None:
        if fmt not in SPEECH_FORMATS:
            raise ValueError(f"unsupported format {fmt!r}")
        self.fmt, self.rate = fmt, rate
        self._started = False
        self._writer: OggOpusWriter | _FFmpegWriter | None = None
        if fmt == "opus":
            self._writer = OggOpusWriter(rate, bitrate)
        elif fmt in _ENCODERS:
            self._writer = _FFmpegWriter(fmt, rate)

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.fmt]

    def write(self, pcm: bytes) -> bytes:
        if self._writer is not None:
            return self._writer.write(pcm)
        head = b"" if self._started or self.fmt == "pcm" else wav_header(self.rate)
        self._started = True
        return head + pcm

    def close(self) -> bytes:
        if self._writer is not None:
            return self._writer.close()
        return b"" if self._started or self.fmt == "pcm" else wav_header(self.rate)


# --- G.711 and resampling --------------------------------------------------------------------------

def _ulaw_encode_table() -> np.ndarray:
    x = np.arange(-32768, 32768, dtype=np.int32)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def _ulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent, mantissa = (u >> 4) & 0x07, u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype("<i2")


def _alaw_encode_table() -> np.ndarray:
    x = np.arange(-32768, 32768, dtype=np.int32)
    mask = np.where(x >= 0, 0xD5, 0x55)
    magnitude = np.minimum(np.where(x >= 0, x, -x - 1), 32767)
    exponent = np.clip(np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32) - 7, 0, 7)
    shift = np.where(exponent == 0, 4, exponent + 3)
    mantissa = (magnitude >> shift) & 0x0F
    return (((exponent << 4) | mantissa) ^ mask).astype(np.uint8)


def _alaw_decode_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent, mantissa = (a >> 4) & 0x07, a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8,
                         ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype("<i2")


_ENCODE = {"ulaw": _ulaw_encode_table(), "alaw": _alaw_encode_table()}
_DECODE = {"ulaw": _ulaw_decode_table(), "alaw": _alaw_decode_table()}
G711_RATE = 8000


def g711_encode(pcm: bytes, law: str) -> bytes:
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.int32)
    return bytes(_ENCODE[law][samples + 32768])


def g711_decode(data: bytes, law: str) -> bytes:
    return bytes(_DECODE[law][np.frombuffer(data, dtype=np.uint8)].tobytes())


class StreamResampler:
    """PCM16 from one rate to another across calls (filter state kept between chunks)."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self._odd = b""
        self._stream = None if rate_in == rate_out else soxr.ResampleStream(
            rate_in, rate_out, 1, dtype="int16", quality="HQ")

    def __call__(self, pcm: bytes, last: bool = False) -> bytes:
        data = self._odd + pcm
        cut = len(data) - len(data) % 2
        self._odd = data[cut:]
        if self._stream is None:
            return data[:cut]
        samples = np.frombuffer(data[:cut], dtype="<i2")
        return bytes(self._stream.resample_chunk(samples, last=last).tobytes())
