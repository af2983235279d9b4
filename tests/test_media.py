"""gateway/media.py against FFmpeg (PyAV) as the reference: uploads in the containers browsers and
phones record, streamed speech encodings, G.711 tables and the streaming resampler."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from common.audio import read_wav, resample_pcm16, rms_dbfs
from gateway.codec import CodecError
from gateway.media import (
    SPEECH_FORMATS,
    SpeechEncoder,
    StreamResampler,
    decode_upload,
    g711_decode,
    g711_encode,
)

CONTAINERS = [("webm", "libopus"), ("ogg", "libopus"), ("mp3", "libmp3lame"), ("ipod", "aac"),
              ("wav", "pcm_s16le")]


def encode(pcm: bytes, rate: int, container: str, codec: str) -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format=container) as muxer:
        stream: Any = muxer.add_stream(codec, rate=48000 if codec == "libopus" else rate)
        stream.codec_context.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16",
                                           layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.codec_context.format or "s16", layout="mono",
                                      rate=stream.codec_context.sample_rate)
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(converted):
                muxer.mux(packet)
        for packet in stream.encode(None):
            muxer.mux(packet)
    return out.getvalue()


@pytest.fixture(scope="module")
def clip(fixtures_dir: Path) -> tuple[bytes, int]:
    return read_wav(fixtures_dir / "q_en_capital.wav")


@pytest.mark.parametrize(("container", "codec"), CONTAINERS, ids=[c for c, _ in CONTAINERS])
def test_uploads_decode_to_16khz_of_the_same_length(clip: tuple[bytes, int], container: str,
                                                    codec: str) -> None:
    pcm, rate = clip
    decoded = decode_upload(encode(pcm, rate, container, codec), max_seconds=30)
    seconds, expected = len(decoded) / 32000, len(pcm) / 2 / rate
    assert abs(seconds - expected) < 0.1, (seconds, expected)  # encoder delay and padding only
    assert abs(rms_dbfs(decoded) - rms_dbfs(pcm)) < 3.0


def test_an_upload_longer_than_the_limit_is_refused_while_decoding(clip: tuple[bytes, int]) -> None:
    pcm, rate = clip
    with pytest.raises(CodecError, match="longer than"):
        decode_upload(encode(pcm * 4, rate, "mp3", "libmp3lame"), max_seconds=2)


@pytest.mark.parametrize("data", [b"", b"not audio" * 100, b"RIFF\x00\x00\x00\x00WAVE"])
def test_what_is_not_audio_is_a_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_upload(data, max_seconds=30)


@pytest.mark.parametrize("fmt", SPEECH_FORMATS)
def test_streamed_speech_decodes_to_what_was_written(clip: tuple[bytes, int], fmt: str) -> None:
    pcm = resample_pcm16(*clip, 24000)
    encoder = SpeechEncoder(fmt, 24000)
    pieces = [encoder.write(pcm[at: at + 1920]) for at in range(0, len(pcm), 1920)]  # 40 ms a write
    data = b"".join(pieces) + encoder.close()
    assert sum(1 for piece in pieces if piece) > 1  # bytes come out while writing, not only at the end
    if fmt == "pcm":
        assert data == pcm
        return
    decoded = decode_upload(data, max_seconds=30)
    assert abs(len(decoded) / 32000 - len(pcm) / 48000) < 0.1


def ffmpeg_g711(codec: str, data: bytes | None = None, pcm: bytes | None = None) -> bytes:
    if data is not None:
        context: Any = av.CodecContext.create(codec, "r")
        context.sample_rate, context.layout = 8000, "mono"
        return b"".join(f.to_ndarray().astype("<i2").tobytes() for f in context.decode(av.Packet(data)))
    context = av.CodecContext.create(codec, "w")
    context.sample_rate, context.layout, context.format = 8000, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm or b"", dtype="<i2").reshape(1, -1), format="s16",
                                       layout="mono")
    frame.sample_rate = 8000
    return b"".join(bytes(p) for p in context.encode(frame))


@pytest.mark.parametrize(("law", "codec"), [("ulaw", "pcm_mulaw"), ("alaw", "pcm_alaw")])
def test_g711_decoding_matches_ffmpeg_for_every_code(law: str, codec: str) -> None:
    every = bytes(range(256))
    assert g711_decode(every, law) == ffmpeg_g711(codec, data=every)


@pytest.mark.parametrize(("law", "codec"), [("ulaw", "pcm_mulaw"), ("alaw", "pcm_alaw")])
def test_g711_encoding_is_as_close_as_ffmpegs(law: str, codec: str) -> None:
    samples = np.arange(-32768, 32768, 7, dtype=np.int32).astype("<i2")
    ours = np.frombuffer(g711_decode(g711_encode(samples.tobytes(), law), law), dtype="<i2").astype(np.int32)
    theirs = np.frombuffer(ffmpeg_g711(codec, data=ffmpeg_g711(codec, pcm=samples.tobytes())),
                           dtype="<i2").astype(np.int32)
    ours_error = np.abs(ours - samples.astype(np.int32))
    theirs_error = np.abs(theirs - samples.astype(np.int32))
    # Companding error is a step of the code's segment; ours may round the other way at a step's edge.
    assert ours_error.max() <= 2 * theirs_error.max() + 16
    assert ours_error.mean() <= theirs_error.mean() * 1.6 + 1


def test_the_stream_resampler_keeps_length_across_odd_chunks(clip: tuple[bytes, int]) -> None:
    pcm, rate = clip
    resample = StreamResampler(rate, 24000)
    out = b"".join(resample(pcm[at: at + 333]) for at in range(0, len(pcm), 333)) + resample(b"", last=True)
    assert abs(len(out) / 48000 - len(pcm) / 2 / rate) < 0.01
