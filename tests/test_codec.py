"""Gateway codecs: Opus round trips, packet framing, bit rate, bad input, Ogg streaming, WAV in and out."""

from __future__ import annotations

import io
import struct
import wave

import av
import numpy as np
import pytest

from common.audio import SAMPLE_RATE, wav_bytes
from gateway.codec import (
    MAX_OPUS_PACKET,
    CodecError,
    OggOpusWriter,
    OpusDecoder,
    OpusEncoder,
    read_upload,
    wav_header,
)

FRAME_48K = 960
FRAME_16K = 320
# libopus looks 6.5 ms ahead: 312 samples at 48 kHz, 104 at 16 kHz.
CODEC_DELAY_16K = 104


def sine(freq: float, seconds: float, rate: int = SAMPLE_RATE, amplitude: float = 0.3) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2").tobytes()


def noise(seconds: float, rate: int = SAMPLE_RATE, seed: int = 0) -> bytes:
    samples = np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 3000
    return samples.astype("<i2").tobytes()


def uneven_chunks(data: bytes, seed: int = 1) -> list[bytes]:
    """Chunks of 1..2999 bytes, so odd byte counts and partial frames cross every call boundary."""
    rng = np.random.default_rng(seed)
    chunks, pos = [], 0
    while pos < len(data):
        size = int(rng.integers(1, 3000))
        chunks.append(data[pos : pos + size])
        pos += size
    return chunks


def encode_all(pcm: bytes, encoder: OpusEncoder | None = None) -> list[bytes]:
    encoder = encoder or OpusEncoder()
    packets = [packet for chunk in uneven_chunks(pcm) for packet in encoder.encode(chunk)]
    return packets + encoder.flush()


def decode_all(packets: list[bytes], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    decoder = OpusDecoder(sample_rate)
    pcm = b"".join(decoder.decode(packet) for packet in packets) + decoder.flush()
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def samples_48k(packet: bytes) -> int:
    """Samples in one packet, counted by a bare PyAV decoder rather than the code under test."""
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate = 48000
    decoder.layout = "mono"
    return sum(frame.samples for frame in decoder.decode(av.Packet(packet)))


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[np.argmax(spectrum)])


def test_sine_round_trip_keeps_duration_and_pitch() -> None:
    pcm = sine(440, 2.0)
    decoded = decode_all(encode_all(pcm))
    original = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    # Flush pads to a whole frame, and the decoder also returns the encoder's lookahead.
    assert 0 <= decoded.size - original.size <= FRAME_16K + CODEC_DELAY_16K
    assert abs(peak_hz(decoded, SAMPLE_RATE) - 440) < 2
    middle = slice(1600, -1600)  # skip the encoder's start-up and the padded end
    # SILK is not sample-exact: on a pure tone the best alignment can sit a sample off the lookahead.
    best = max(
        np.corrcoef(decoded[lag : lag + original.size][middle], original[middle])[0, 1]
        for lag in range(CODEC_DELAY_16K - 4, CODEC_DELAY_16K + 5)
    )
    assert best > 0.98


def test_codec_delay_is_the_opus_lookahead() -> None:
    """Noise has one correlation peak, so it pins the end-to-end delay (soxr hides its own)."""
    pcm = noise(1.0)
    decoded = decode_all(encode_all(pcm))
    original = np.frombuffer(pcm, dtype="<i2").astype(np.float64)[:8000]
    scores = [np.dot(decoded[lag : lag + original.size], original) for lag in range(400)]
    assert int(np.argmax(scores)) == CODEC_DELAY_16K


def test_every_packet_is_20_ms() -> None:
    packets = encode_all(sine(440, 1.0))
    assert len(packets) == 1 * 50 + 1  # 50 frames, plus the one that drains the lookahead
    assert {samples_48k(packet) for packet in packets} == {FRAME_48K}
    assert decode_all(packets).size == len(packets) * FRAME_16K


def test_each_20_ms_of_input_gives_a_packet_at_once() -> None:
    encoder = OpusEncoder()
    pcm = sine(440, 0.5)
    step = FRAME_16K * 2
    counts = [len(encoder.encode(pcm[i : i + step])) for i in range(0, len(pcm), step)]
    assert counts == [1] * 25


def test_non_opus_rate_is_resampled_to_48k() -> None:
    rate = 22050
    packets = encode_all(sine(440, 1.0, rate), OpusEncoder(sample_rate=rate))
    assert {samples_48k(packet) for packet in packets} == {FRAME_48K}
    decoded = decode_all(packets, sample_rate=48000)
    assert abs(decoded.size - 48000) <= 2 * FRAME_48K
    assert abs(peak_hz(decoded, 48000) - 440) < 2


@pytest.mark.parametrize("signal", [sine(440, 2.0), noise(2.0)], ids=["sine", "noise"])
def test_bitrate_is_roughly_respected(signal: bytes) -> None:
    total = sum(len(packet) for packet in encode_all(signal, OpusEncoder(bitrate=24000)))
    kbps = total * 8 / 2.0 / 1000
    assert 24 / 1.5 <= kbps <= 32 * 1.5


def test_encoder_starts_a_new_stream_after_flush() -> None:
    encoder = OpusEncoder()
    first = encode_all(sine(440, 0.2), encoder)
    second = encode_all(sine(440, 0.2), encoder)
    assert len(first) == len(second) == 11


@pytest.mark.parametrize(
    "packet",
    [b"", b"\xff\xff\xff", b"\x03", b"garbage!garbage!", b"\x78" + b"\x00" * MAX_OPUS_PACKET],
    ids=["empty", "bad-code-3", "truncated-code-3", "text", "too-long"],
)
def test_bad_packets_raise_and_decoder_recovers(packet: bytes) -> None:
    good = encode_all(sine(440, 0.1))
    decoder = OpusDecoder(48000)
    assert len(decoder.decode(good[0])) == FRAME_48K * 2
    with pytest.raises(CodecError):
        decoder.decode(packet)
    assert len(decoder.decode(good[1])) == FRAME_48K * 2


def test_ogg_writer_streams_pages_before_close() -> None:
    writer = OggOpusWriter()
    pcm = sine(440, 2.0)
    step = FRAME_16K * 2
    pieces = [writer.write(pcm[i : i + step]) for i in range(0, len(pcm), step)]
    first_audio_page = next(i for i, piece in enumerate(pieces[1:], start=1) if piece)
    assert pieces[0].startswith(b"OggS")  # header pages go out with the first audio
    assert first_audio_page * 20 <= 300  # and audio within ~0.3 s, well before close
    data = b"".join(pieces) + writer.close()
    assert writer.close() == b""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        frames = list(container.decode(stream))
    assert frames[0].sample_rate == 48000
    assert abs(sum(frame.samples for frame in frames) / 48000 - 2.0) <= 0.06


def test_ogg_writer_handles_odd_chunks_and_other_rates() -> None:
    writer = OggOpusWriter(sample_rate=22050)
    data = b"".join(writer.write(chunk) for chunk in uneven_chunks(sine(440, 1.3, 22050))) + writer.close()
    with av.open(io.BytesIO(data)) as container:
        decoded = sum(frame.samples for frame in container.decode(audio=0))
    assert abs(decoded / 48000 - 1.3) <= 0.06
    with pytest.raises(ValueError):
        writer.write(b"\x00\x00")


def test_ogg_writer_with_no_audio_still_makes_a_playable_file() -> None:
    writer = OggOpusWriter()
    data = writer.write(b"") + writer.write(b"\x01") + writer.close()  # a lone byte is no sample yet
    with av.open(io.BytesIO(data)) as container:
        assert sum(frame.samples for frame in container.decode(audio=0)) <= FRAME_48K


def test_wav_header_matches_wave_module_and_streams_with_unknown_size() -> None:
    pcm = sine(440, 1.0)
    assert wav_header(SAMPLE_RATE, len(pcm)) + pcm == wav_bytes(pcm)
    header = wav_header()
    assert len(header) == 44
    assert struct.unpack("<I", header[4:8])[0] == struct.unpack("<I", header[40:44])[0] == 0xFFFFFFFF
    with av.open(io.BytesIO(header + pcm)) as container:
        stream = container.streams.audio[0]
        assert stream.sample_rate == SAMPLE_RATE
        assert sum(frame.samples for frame in container.decode(stream)) == SAMPLE_RATE
    with pytest.raises(ValueError):
        wav_header(SAMPLE_RATE, 3)


def wav_file(frames: bytes, channels: int = 1, width: int = 2, rate: int = SAMPLE_RATE) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(frames)
    return buffer.getvalue()


def test_read_upload_mono_wav() -> None:
    pcm = sine(440, 0.5, 22050)
    assert read_upload(wav_file(pcm, rate=22050), None) == (pcm, 22050)


def test_read_upload_downmixes_stereo_wav() -> None:
    left = np.array([1000, -2000, 30000, 3], dtype="<i2")
    right = np.array([3000, 2000, 30001, 4], dtype="<i2")
    stereo = np.stack([left, right], axis=1).tobytes()
    pcm, rate = read_upload(wav_file(stereo, channels=2), None)
    assert rate == SAMPLE_RATE
    mono = np.frombuffer(pcm, dtype="<i2")
    assert mono.tolist()[:2] == [2000, 0]
    assert abs(int(mono[2]) - 30000) <= 1 and abs(int(mono[3]) - 3) <= 1


def test_read_upload_raw_pcm() -> None:
    pcm = sine(440, 0.1, 8000)
    assert read_upload(pcm, 8000) == (pcm, 8000)
    with pytest.raises(CodecError, match="odd"):
        read_upload(pcm + b"\x00", 8000)


def test_read_upload_rejects_8_bit_and_float_wav() -> None:
    with pytest.raises(CodecError, match="8-bit"):
        read_upload(wav_file(b"\x80" * 100, width=1), None)
    float_wav = bytearray(wav_file(b"\x00" * 400, width=4))
    float_wav[20:22] = struct.pack("<H", 3)  # format tag 3: IEEE float
    with pytest.raises(CodecError, match="IEEE float"):
        read_upload(bytes(float_wav), None)


@pytest.mark.parametrize("junk", [b"", b"hello world, not audio", b"RIFF\x00\x00\x00\x00WAVEjunk"])
def test_read_upload_rejects_junk(junk: bytes) -> None:
    with pytest.raises(CodecError):
        read_upload(junk, None)
