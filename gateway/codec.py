"""Audio codecs at the gateway's edge: raw Opus for WebSockets, Ogg/Opus and WAV for HTTP, WAV uploads.

Everything behind the gateway speaks PCM16 little-endian mono at 16 kHz (`common.audio`). Browsers and
phones on real networks should not have to: 16 kHz PCM16 is 256 kbit/s, Opus at 24 kbit/s carries the
same speech in a tenth of that. This module is the only place that converts between the two, so the
workers never see a compressed byte.

Design choices, each measured with PyAV 18 / libopus and soxr 1.1 on this project:

* Opus packets are always 20 ms. One packet per WebSocket message keeps framing trivial (no length
  prefixes) and matches the 20 ms frames used everywhere else in the pipeline.
* The encoder feeds libopus directly at the caller's rate when it is one libopus accepts (8/12/16/24/48
  kHz). An Opus packet does not record the rate it was encoded from, so every standard decoder still
  decodes it at 48 kHz. Resampling 16 kHz to 48 kHz first would add soxr's block buffering (about 21 ms
  on average, 37 ms at worst, with some 20 ms inputs giving no packet at all) and would make libopus
  spend bits on an empty 8-24 kHz band. Other rates (22.05 kHz TTS voices) go through a streaming soxr
  resampler to 48 kHz, so the filter state carries over between calls and chunk edges do not click.
* FFmpeg's libopus decoder always outputs 48 kHz, so the decoder resamples with a streaming soxr
  resampler. That adds the same ~21 ms of buffering; `OpusDecoder.flush` hands back the held tail.
* Constrained VBR: unconstrained VBR overshot 24 kbit/s by half on tonal input (37 kbit/s), which
  matters on mobile uplinks; constrained VBR stays within a few percent of the target.
* Ogg pages are cut every 100 ms instead of FFmpeg's default 1 s, so an HTTP client starts playing
  after ~0.2 s instead of ~1 s; each page costs ~28 bytes, about 2 kbit/s at this page rate.

None of the classes are thread-safe: each belongs to one connection or one response.
"""

from __future__ import annotations

import struct
from typing import Any

import av
import numpy as np
import soxr

from common.audio import BYTES_PER_SAMPLE, SAMPLE_RATE

OPUS_RATE = 48000
FRAME_MS = 20
MAX_OPUS_PACKET = 1275  # RFC 6716 §3.2.1: the largest Opus frame; our packets carry one frame each
OGG_PAGE_MS = 100
# Rates libopus takes natively; anything else is resampled to 48 kHz first.
_OPUS_INPUT_RATES = (8000, 12000, 16000, 24000, 48000)
# Same quality as the TTS worker's streaming resampler; LQ halves the buffering but rolls off above 6.5 kHz.
_SOXR_QUALITY = "HQ"
_UNKNOWN_SIZE = 0xFFFFFFFF
_WAV_FORMAT_PCM = 1
_WAV_FORMAT_EXTENSIBLE = 0xFFFE
_WAV_FORMAT_NAMES = {2: "MS ADPCM", 3: "IEEE float", 6: "A-law", 7: "µ-law", 0x11: "IMA ADPCM", 0x55: "MP3"}


class CodecError(Exception):
    """Input audio that cannot be decoded or parsed; the message says what was wrong with it."""


def _encoder_options() -> dict[str, str]:
    # voip: speech-tuned (SILK/hybrid modes); 20 ms frames; constrained VBR keeps the bit rate near target.
    return {"application": "voip", "frame_duration": str(FRAME_MS), "vbr": "constrained"}


def _configure_encoder(ctx: Any, rate: int, bitrate: int) -> None:
    """Settings shared by the raw encoder and the Ogg writer's stream (libopus takes s16 or flt)."""
    ctx.sample_rate = rate
    ctx.layout = "mono"
    ctx.format = "s16"
    ctx.bit_rate = bitrate
    ctx.options = _encoder_options()


def _resample_stream(in_rate: int, out_rate: int) -> soxr.ResampleStream:
    # One stream per direction and connection: its filter state is what keeps chunk edges click-free.
    return soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=_SOXR_QUALITY)


class _PcmFramer:
    """Cuts PCM16 byte chunks of any length into exact 20 ms `av.AudioFrame`s at a rate libopus accepts.

    Carries an odd trailing byte and any partial frame over to the next call, and keeps one streaming
    resampler for rates libopus does not take, so a stream split into chunks encodes like one piece.
    """

    def __init__(self, sample_rate: int) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.rate = sample_rate if sample_rate in _OPUS_INPUT_RATES else OPUS_RATE
        self.frame_samples = self.rate * FRAME_MS // 1000
        self._resampler: soxr.ResampleStream | None = None
        if self.rate != sample_rate:
            self._resampler = _resample_stream(sample_rate, self.rate)
        self._odd_byte = b""
        self._pending = np.zeros(0, dtype=np.int16)
        self._pts = 0
        self.samples_in = 0

    def push(self, pcm16: bytes) -> list[av.AudioFrame]:
        data = self._odd_byte + pcm16
        cut = len(data) - len(data) % BYTES_PER_SAMPLE
        self._odd_byte = data[cut:]
        samples = np.frombuffer(data[:cut], dtype="<i2")
        self.samples_in += samples.size
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        self._pending = np.concatenate([self._pending, samples])
        return self._take_frames()

    def finish(self, pad: bool) -> list[av.AudioFrame]:
        """The rest of the stream: padded with silence to a whole frame, or as a short last frame."""
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
            self._pending = np.concatenate([self._pending, tail])
        frames = self._take_frames()
        if self._pending.size:
            last = self._pending
            if pad:
                last = np.concatenate([last, np.zeros(self.frame_samples - last.size, dtype=np.int16)])
            frames.append(self._frame(last))
        self._pending = np.zeros(0, dtype=np.int16)
        return frames

    def _take_frames(self) -> list[av.AudioFrame]:
        size = self.frame_samples
        whole = self._pending.size // size * size
        frames = [self._frame(self._pending[i : i + size]) for i in range(0, whole, size)]
        self._pending = self._pending[whole:]
        return frames

    def _frame(self, samples: np.ndarray) -> av.AudioFrame:
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self.rate
        frame.pts = self._pts  # in 1/rate units, which is the codec's time base
        self._pts += samples.size
        return frame


class OpusEncoder:
    """PCM16 mono chunks in, raw 20 ms Opus packets out (one per WebSocket binary message).

    libopus looks 6.5 ms ahead, so the first packet covers the lookahead and the last audio only comes
    out of `flush`. After `flush` the encoder starts a fresh Opus stream on the next `encode`.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, bitrate: int = 24000) -> None:
        self.sample_rate = sample_rate
        self.bitrate = bitrate
        self._reset()

    def _reset(self) -> None:
        self._framer = _PcmFramer(self.sample_rate)
        self._ctx = av.CodecContext.create("libopus", "w")
        _configure_encoder(self._ctx, self._framer.rate, self.bitrate)
        self._ctx.open()

    def encode(self, pcm16: bytes) -> list[bytes]:
        return self._encode_frames(self._framer.push(pcm16))

    def flush(self) -> list[bytes]:
        """Pads the tail to a whole 20 ms frame, drains the lookahead and resets for a new stream."""
        packets = self._encode_frames(self._framer.finish(pad=True))
        packets += [bytes(packet) for packet in self._ctx.encode(None)]
        self._reset()
        return packets

    def _encode_frames(self, frames: list[av.AudioFrame]) -> list[bytes]:
        return [bytes(packet) for frame in frames for packet in self._ctx.encode(frame)]


def _frame_to_int16(frame: av.AudioFrame) -> np.ndarray:
    """A decoded mono frame as int16 (FFmpeg's libopus decoder gives s16 here, flt in other builds)."""
    samples = frame.to_ndarray()[0]  # row 0: the only plane, or the only channel of a packed mono frame
    if samples.dtype == np.int16:
        return samples
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


class OpusDecoder:
    """Raw Opus packets in (one per WebSocket message, from any 48 kHz Opus encoder), PCM16 mono out.

    soxr buffers ~21 ms while resampling 48 kHz down, so output lags input a little and comes in uneven
    pieces; call `flush` when the stream ends to get the buffered tail.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate = sample_rate
        self._ctx = av.CodecContext.create("libopus", "r")
        self._ctx.sample_rate = OPUS_RATE
        self._ctx.layout = "mono"  # libopus downmixes stereo packets for us
        self._resampler: soxr.ResampleStream | None = None

    def decode(self, packet: bytes) -> bytes:
        # An empty av.Packet means "end of stream" to FFmpeg and would leave the decoder drained for good.
        if not packet:
            raise CodecError("empty Opus packet")
        if len(packet) > MAX_OPUS_PACKET:
            raise CodecError(f"Opus packet of {len(packet)} bytes exceeds the {MAX_OPUS_PACKET}-byte maximum")
        try:
            frames = self._ctx.decode(av.Packet(bytes(packet)))
        except av.error.FFmpegError as exc:
            # libopus validates a packet before decoding it, so a rejected one leaves the state intact.
            raise CodecError(f"undecodable Opus packet ({len(packet)} bytes): {exc}") from exc
        if not frames:
            return b""
        samples = np.concatenate([_frame_to_int16(frame) for frame in frames])
        return self._resample(samples, frames[0].sample_rate)

    def flush(self) -> bytes:
        """The audio soxr still holds; the decoder then takes a new stream."""
        if self._resampler is None:
            return b""
        tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        self._resampler = None
        return tail.astype("<i2").tobytes()

    def _resample(self, samples: np.ndarray, rate: int) -> bytes:
        if rate == self.sample_rate:
            return samples.astype("<i2").tobytes()
        if self._resampler is None:
            self._resampler = _resample_stream(rate, self.sample_rate)
        return self._resampler.resample_chunk(samples).astype("<i2").tobytes()


class _ByteSink:
    """Write-only file object for the Ogg muxer; having no `seek` tells FFmpeg the output is a stream."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


class OggOpusWriter:
    """Streams Ogg/Opus for an HTTP body: `write` returns whatever whole pages are ready, `close` the rest.

    The header pages come out with the first audio and audio pages every 100 ms after that, so a player
    can start about 0.2 s into the stream. The end granule position trims the padding of the last frame,
    so the file decodes to exactly the samples written.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, bitrate: int = 24000) -> None:
        self._framer = _PcmFramer(sample_rate)
        self._sink = _ByteSink()
        self._container = av.open(
            self._sink,
            "w",
            format="ogg",
            # page_duration is in microseconds; flush_packets pushes each finished page to the sink at once.
            container_options={"page_duration": str(OGG_PAGE_MS * 1000), "flush_packets": "1"},
        )
        self._stream = self._container.add_stream("libopus", rate=self._framer.rate)
        _configure_encoder(self._stream.codec_context, self._framer.rate, bitrate)
        self._closed = False

    def write(self, pcm16: bytes) -> bytes:
        if self._closed:
            raise ValueError("OggOpusWriter is closed")
        self._mux(self._framer.push(pcm16))
        return self._sink.take()

    def close(self) -> bytes:
        """Encodes the tail, drains the encoder and writes the last (end-of-stream) page."""
        if self._closed:
            return b""
        self._closed = True
        if not self._framer.samples_in:
            # Headers alone are not a file FFmpeg or browsers will open; one silent sample is.
            self._mux(self._framer.push(b"\x00" * BYTES_PER_SAMPLE))
        # A short last frame (libopus pads it) lets FFmpeg set the exact end granule position.
        self._mux(self._framer.finish(pad=False))
        self._mux(None)
        self._container.close()
        return self._sink.take()

    def _mux(self, frames: list[av.AudioFrame] | None) -> None:
        for frame in [None] if frames is None else frames:
            self._container.mux(self._stream.encode(frame))


def wav_header(sample_rate: int = SAMPLE_RATE, data_bytes: int | None = None) -> bytes:
    """The 44-byte RIFF/WAVE header for PCM16 mono, for a body whose audio follows as it is produced.

    With `data_bytes=None` the RIFF and data sizes are 0xFFFFFFFF, the convention for "length unknown,
    read to the end": FFmpeg, libsndfile/soundfile and browsers accept it, and Python's `wave` reads the
    audio too (with a meaningless frame count). A streamed response cannot go back and patch the sizes,
    and a 0 size would make strict readers see an empty file.
    """
    if data_bytes is None:
        riff_size = data_size = _UNKNOWN_SIZE
    else:
        if data_bytes < 0 or data_bytes % BYTES_PER_SAMPLE or data_bytes > _UNKNOWN_SIZE - 36:
            raise ValueError(f"data_bytes must be a whole number of PCM16 samples under 4 GiB: {data_bytes}")
        riff_size, data_size = 36 + data_bytes, data_bytes
    byte_rate = sample_rate * BYTES_PER_SAMPLE
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", riff_size, b"WAVE",
        b"fmt ", 16, _WAV_FORMAT_PCM, 1, sample_rate, byte_rate, BYTES_PER_SAMPLE, 16,
        b"data", data_size,
    )  # fmt: skip


MAX_WAV_CHUNKS = 64  # RIFF chunks walked before the audio (INZWA_MAX_WAV_CHUNKS in uploads)


def read_upload(data: bytes, raw_sample_rate: int | None,
                max_chunks: int = MAX_WAV_CHUNKS) -> tuple[bytes, int]:
    """PCM16 mono and its rate from an uploaded WAV, or from raw PCM16 mono when `raw_sample_rate` is set.

    Stereo (or wider) WAV is averaged down to mono. Nothing is resampled: callers decide what rate they need.
    At most `max_chunks` RIFF chunks are walked before the audio.
    """
    if raw_sample_rate is not None:
        if raw_sample_rate <= 0:
            raise CodecError(f"raw sample rate must be positive, got {raw_sample_rate}")
        if len(data) % BYTES_PER_SAMPLE:
            raise CodecError(f"raw PCM16 upload has an odd number of bytes ({len(data)})")
        return bytes(data), raw_sample_rate
    channels, rate, pcm = _parse_wav(data, max_chunks)
    if channels == 1:
        return pcm, rate
    frames = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels)
    return np.round(frames.mean(axis=1)).astype("<i2").tobytes(), rate


def _parse_wav(data: bytes, max_chunks: int = MAX_WAV_CHUNKS) -> tuple[int, int, bytes]:
    """(channels, sample rate, PCM16 frames) of a PCM16 WAV; anything else is a CodecError saying why.

    Walks the RIFF chunks itself rather than using `wave`, which in Python 3.11 rejects
    WAVE_FORMAT_EXTENSIBLE files and names unsupported formats only by number.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise CodecError("not a WAV file (no RIFF/WAVE header); send raw PCM16 with its sample rate instead")
    fmt: tuple[int, int] | None = None
    pos = 12
    walked = 0
    while pos + 8 <= len(data):
        walked += 1
        if walked > max_chunks:
            # Real files hold a handful (fmt, LIST, fact, data); millions of empty chunks are
            # an attack on the parser.
            raise CodecError(f"WAV file has more than {max_chunks} chunks before its audio")
        chunk_id, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(data[body : body + size])
        elif chunk_id == b"data":
            if fmt is None:
                raise CodecError("WAV data chunk comes before its fmt chunk")
            # Streamed WAVs say 0xFFFFFFFF and truncated uploads overstate: both mean "to the end".
            end = len(data) if size == _UNKNOWN_SIZE else min(body + size, len(data))
            channels, rate = fmt
            block = channels * BYTES_PER_SAMPLE
            return channels, rate, data[body : end - (end - body) % block]
        pos = body + size + (size & 1)  # RIFF chunks are padded to even lengths
    raise CodecError("WAV file has no fmt chunk" if fmt is None else "WAV file has no data chunk")


def _parse_fmt(body: bytes) -> tuple[int, int]:
    """(channels, sample rate) from a WAV fmt chunk that describes PCM16; else a CodecError naming it."""
    if len(body) < 16:
        raise CodecError(f"WAV fmt chunk is {len(body)} bytes, need at least 16")
    tag, channels, rate, _byte_rate, _block_align, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == _WAV_FORMAT_EXTENSIBLE and len(body) >= 26:
        tag = int.from_bytes(body[24:26], "little")  # first two bytes of the SubFormat GUID
    if tag != _WAV_FORMAT_PCM:
        name = _WAV_FORMAT_NAMES.get(tag, f"format tag 0x{tag:04x}")
        raise CodecError(f"compressed or non-PCM WAV ({name}); upload 16-bit PCM WAV")
    if bits != 16:
        raise CodecError(f"{bits}-bit PCM WAV; only 16-bit samples are supported")
    if channels < 1 or rate < 1:
        raise CodecError(f"WAV header has {channels} channels at {rate} Hz")
    return channels, rate
