"""Frames round-trip through the typed decoders of the sockets that carry them."""

from __future__ import annotations

import msgspec
import pytest

from common.frames import (
    WORKER_KINDS,
    AudioChunk,
    AudioIn,
    ChatMessage,
    EgressMessage,
    GatewayHeartbeat,
    GenerateRequest,
    Heartbeat,
    IngressMessage,
    LlmWork,
    Ready,
    ResultMessage,
    SessionStart,
    TokenChunk,
    TranscriptChunk,
    VadEvent,
    WarmupDone,
    WarmupRequest,
    WorkerExited,
    decoder,
    encode,
    ingress_decoder,
    is_worker_kind,
    reply_envelope,
    result_decoder,
    watchdog_decoder,
)

SID = "5f0c8a52-3f0e-4c1e-9a7e-2b7c4f0d9e11"


@pytest.mark.parametrize(
    ("frame", "union"),
    [
        (TranscriptChunk(session_id=SID, turn_id=2, seq=3, ts_ns=9, text="Mhoro", is_final=True,
                         start_ms=10, end_ms=900, confidence=0.8, language="sn"), ResultMessage),
        (TokenChunk(session_id=SID, turn_id=1, seq=4, token=" Harare", logprob=-0.25), EgressMessage),
        (TokenChunk(session_id=SID, token="", logprob=None, is_final=True), ResultMessage),
        (AudioChunk(session_id=SID, format="pcm16", sample_rate=16000, payload=b"\x01\x00" * 320),
         EgressMessage),
        (SessionStart(session_id=SID, reply_to="tcp://127.0.0.1:5553", language="sn"), IngressMessage),
        (AudioIn(session_id=SID, seq=7, pcm=b"\x00\x01" * 320), IngressMessage),
        (GenerateRequest(session_id=SID, request_id="r1", messages=[ChatMessage("user", "Hi")],
                         max_new_tokens=12), LlmWork),
        (Ready(kind="asr", instance_id="asr-0-ab", endpoint="tcp://127.0.0.1:5560",
               info={"sha256": "00"}), ResultMessage),
        (Heartbeat(kind="tts", instance_id="tts-0", busy=2, endpoint="tcp://x:1"), ResultMessage),
        (VadEvent(session_id=SID, event="speech_start", at_ms=300), ResultMessage),
    ],
)
def test_round_trip(frame: msgspec.Struct, union: object) -> None:
    decoded = decoder(union).decode(encode(frame))
    assert type(decoded) is type(frame)
    assert decoded == frame


def test_decoder_rejects_a_frame_the_socket_does_not_carry() -> None:
    data = encode(GenerateRequest(session_id=SID))
    with pytest.raises(msgspec.ValidationError):
        decoder(IngressMessage).decode(data)


def test_decoder_rejects_garbage() -> None:
    with pytest.raises(msgspec.DecodeError):
        decoder(ResultMessage).decode(b"\xc1not msgpack")


def test_defaults_are_omitted_so_frames_stay_small() -> None:
    small = encode(TokenChunk(token="a"))
    full = encode(TokenChunk(session_id=SID, turn_id=3, seq=9, ts_ns=123456789, token="a"))
    assert len(small) < len(full)
    assert decoder(EgressMessage).decode(small) == TokenChunk(token="a")


def test_appended_field_keeps_old_frames_decodable() -> None:
    """An older producer that did not know a newer trailing field still decodes."""

    class OldAudio(msgspec.Struct, tag="AudioChunk", array_like=True):
        session_id: str = ""
        turn_id: int = 0
        seq: int = 0
        ts_ns: int = 0
        request_id: str = ""
        format: str = "pcm16"
        sample_rate: int = 16000
        payload: bytes = b""

    old = msgspec.msgpack.encode(OldAudio(session_id=SID, payload=b"\x00\x00"))
    decoded = decoder(EgressMessage).decode(old)
    assert isinstance(decoded, AudioChunk)
    assert decoded.payload == b"\x00\x00" and decoded.is_final is False


def test_a_value_outside_its_literal_does_not_decode() -> None:
    """The vocabulary is checked at the socket: no handler sees an unknown kind or event."""

    class Loose(msgspec.Struct, tag="VadEvent", array_like=True):
        session_id: str = ""
        turn_id: int = 0
        seq: int = 0
        ts_ns: int = 0
        request_id: str = ""
        event: str = ""

    with pytest.raises(msgspec.ValidationError):
        result_decoder().decode(msgspec.msgpack.encode(Loose(event="speech_stop")))
    with pytest.raises(msgspec.ValidationError):
        result_decoder().decode(encode(Ready(kind="gpu")))  # type: ignore[arg-type]
    assert all(is_worker_kind(k) for k in WORKER_KINDS) and not is_worker_kind("gateway")


def test_worker_deaths_are_not_accepted_on_the_results_socket() -> None:
    """Only the watchdog's own socket decodes WorkerExited (a worker cannot forge one)."""
    data = encode(WorkerExited(kind="llm", program="llm_worker"))
    with pytest.raises(msgspec.ValidationError):
        result_decoder().decode(data)
    assert watchdog_decoder().decode(data) == WorkerExited(kind="llm", program="llm_worker")


def test_reply_envelope_answers_the_request() -> None:
    request = WarmupRequest(session_id=SID, turn_id=3, request_id="w9", seq=7)
    answer = WarmupDone(**reply_envelope(request), kind="tts", elapsed_ms=1.5)
    assert (answer.session_id, answer.turn_id, answer.request_id, answer.seq) == (SID, 3, "w9", 0)


def test_gateway_heartbeats_and_claims_ride_ingress() -> None:
    beat = GatewayHeartbeat(gateway_id="gw1", incarnation="abc")
    assert ingress_decoder().decode(encode(beat)) == beat
    old = encode(SessionStart(session_id=SID, reply_to="tcp://x:1"))  # an older gateway's start
    decoded = ingress_decoder().decode(old)
    assert isinstance(decoded, SessionStart) and decoded.gateway_id == ""
