"""The remote ASR and TTS engines (`INZWA_ASR_ENGINE=openai`, `INZWA_TTS_ENGINE=openai`) against
OpenAI's audio routes served by the REAL Whisper model and Piper voice (tests/remote_servers.py:
no third-party OpenAI-compatible speech server installs from PyPI here)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from asr_worker.engines.openai import OpenAIAsr
from asr_worker.session import AsrSession, Transcript
from asr_worker.wer import normalize
from common.audio import SAMPLE_RATE, pcm16_to_float, read_wav, rms_dbfs
from common.frames import AudioChunk, SynthesizeRequest, WorkerError
from tests.remote_servers import SpeechServer
from tests.test_engine_failures import RecordingRuntime, run, stop
from tts_worker.engines.openai import OpenAITts, wav_data_start
from tts_worker.worker import TtsWorker

pytestmark = pytest.mark.models

TEXT = "The capital of Zimbabwe is Harare. It is a big city. Many people live there."


@pytest.fixture(scope="module")
def speech_server(whisper_engine, piper_voice) -> Iterator[SpeechServer]:
    server = SpeechServer(whisper_engine, piper_voice)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def capital(fixtures_dir: Path) -> bytes:
    return read_wav(fixtures_dir / "q_en_capital.wav")[0]


def test_a_final_is_transcribed_remotely(speech_server: SpeechServer, capital: bytes) -> None:
    asr = OpenAIAsr(speech_server.url, model="whisper-1")
    result = asr.transcribe(pcm16_to_float(capital), "en")
    heard = normalize(result.text)
    assert "capital" in heard and "zimbabwe" in heard
    assert result.language == "en" and 0 < result.confidence <= 1  # "english" mapped to its code
    sent = speech_server.requests[-1]
    assert sent == {"route": "transcriptions", "model": "whisper-1", "language": "en",
                    "rate": SAMPLE_RATE, "format": "verbose_json"}


def test_an_upload_gets_segments_and_silence_costs_no_request(
    speech_server: SpeechServer, capital: bytes
) -> None:
    asr = OpenAIAsr(speech_server.url, model="whisper-1")
    upload = asr.transcribe_file(pcm16_to_float(capital), None)
    assert upload.segments and upload.segments[0].end_s > upload.segments[0].start_s
    assert upload.duration_s == pytest.approx(len(capital) / 2 / SAMPLE_RATE)
    before = len(speech_server.requests)
    assert asr.transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32), "en").text == ""
    assert len(speech_server.requests) == before


def test_the_stream_adapter_gives_remote_finals_without_partials(
    speech_server: SpeechServer, capital: bytes
) -> None:
    """Partials are skipped for the remote engine: one request per utterance."""
    asr = OpenAIAsr(speech_server.url, model="whisper-1")
    session = AsrSession(asr, language="en", pause_ms=None)
    before = len(speech_server.requests)
    events = [e for i in range(0, len(capital), 640) for e in session.feed(capital[i : i + 640])]
    events += session.end_turn()
    transcripts = [e for e in events if isinstance(e, Transcript)]
    assert [t.is_final for t in transcripts] == [True]
    assert "zimbabwe" in normalize(transcripts[0].text)
    assert len(speech_server.requests) - before == 1


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
def test_speech_streams_in_and_is_resampled(speech_server: SpeechServer, piper_voice, fmt: str) -> None:
    tts = OpenAITts(speech_server.url, response_format=fmt, pcm_rate=piper_voice.sample_rate)
    frames, speaking_at_first = [], None
    for frame in tts.synthesize_stream(TEXT, sample_rate=SAMPLE_RATE, frame_ms=20):
        if speaking_at_first is None:
            speaking_at_first = speech_server.speaking
        frames.append(frame)
    assert speaking_at_first is True  # the first frame came while the server still synthesized
    assert {len(f) for f in frames} == {640}  # exact 20 ms frames at 16 kHz
    audio = b"".join(frames)
    assert rms_dbfs(audio) > -35.0  # speech, not silence
    local = b"".join(piper_voice.synthesize_stream(TEXT, sample_rate=SAMPLE_RATE))
    assert 0.8 < len(audio) / len(local) < 1.25  # the whole text, at the right rate


def test_wav_headers_are_read_as_they_stream_in() -> None:
    from tests.remote_servers import _wav_header

    header = _wav_header(22050)
    assert wav_data_start(header[:20]) is None  # not all of it yet
    assert wav_data_start(header) == (22050, 44)
    with pytest.raises(ValueError, match="not a WAV"):
        wav_data_start(b"ID3\x04" + bytes(40))


def test_the_tts_worker_speaks_through_a_text_voice(speech_server: SpeechServer) -> None:
    """A text voice needs no phonemizer: a Shona phrase goes to the server as text."""

    async def main() -> None:
        worker = TtsWorker(OpenAITts(speech_server.url, pcm_rate=22050), frame_ms=20)
        assert worker._phonemizer("sn") is None
        runtime = RecordingRuntime("tts")
        worker.runtime = runtime  # type: ignore[assignment]
        serving = asyncio.create_task(worker.run())
        await worker.handle(SynthesizeRequest(session_id="s1", turn_id=1, request_id="p1",
                                              text="Mhoro, makadii?", language="sn"))
        await runtime.wait_for(runtime.final_of("p1"), 60)
        assert runtime.of(WorkerError) == []
        assert sum(len(c.payload) for c in runtime.of(AudioChunk, "p1")) > SAMPLE_RATE // 2
        assert speech_server.requests[-1]["input"] == "Mhoro, makadii?"
        await stop(serving)

    run(main())
