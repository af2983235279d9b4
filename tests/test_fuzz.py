"""Property-based fuzzing of what parses untrusted bytes: control messages and frames.

Whatever a client or a peer sends, parsing ends in a value or in the one error type its caller
handles (ProtocolError for client JSON, msgspec errors for frames): never anything else.
"""

from __future__ import annotations

import contextlib
import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.frames import EgressMessage, IngressMessage, ResultMessage, decoder
from gateway.codec import CodecError, OpusDecoder, OpusEncoder, read_upload
from gateway.protocol import ProtocolError, Start, check_audio, check_start, parse_client_message

SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
JSON_VALUES = st.recursive(
    SCALARS | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
MESSAGES = st.fixed_dictionaries(
    {"type": st.sampled_from(["start", "end_turn", "stop", "", "START"])},
    optional={
        "session_id": st.text(max_size=40) | st.integers(),
        "codec": st.sampled_from(["pcm16", "opus", "mp3", ""]) | st.integers(),
        "sample_rate": st.integers(-10, 100_000) | st.text(max_size=5),
        "language": st.sampled_from(["en", "sn", "auto", "", "xx"]) | st.none(),
        "auth_token": st.text(max_size=30),
        "extra": JSON_VALUES,
    },
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=5000), MESSAGES.map(json.dumps), JSON_VALUES.map(json.dumps)))
def test_control_messages_parse_or_fail_with_a_protocol_error(text: str) -> None:
    try:
        message = parse_client_message(text)
    except ProtocolError as exc:
        assert exc.code in ("bad_json", "bad_message", "message_too_large") and exc.message
        return
    if isinstance(message, Start):
        try:
            session_id = check_start(message)
        except ProtocolError as exc:
            assert exc.code.startswith(("unsupported_", "bad_session_id"))
        else:
            assert len(session_id) == 36


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000))
def test_audio_frames_are_accepted_only_when_well_formed(data: bytes) -> None:
    try:
        check_audio(data, max_bytes=3200)
    except ProtocolError as exc:
        assert exc.code in ("empty_frame", "odd_frame", "frame_too_large")
    else:
        assert data and len(data) % 2 == 0 and len(data) <= 3200


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300) | JSON_VALUES.map(msgspec.msgpack.encode))
def test_frame_decoders_fail_only_with_decode_errors(data: bytes) -> None:
    for union in (IngressMessage, EgressMessage, ResultMessage):
        with contextlib.suppress(msgspec.DecodeError):  # ValidationError is a DecodeError too
            decoder(union).decode(data)  # any other exception fails the test


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=1400), min_size=1, max_size=5))
def test_opus_packets_decode_or_fail_with_a_codec_error(packets: list[bytes]) -> None:
    """A client's Opus packets: audio or CodecError, and the decoder survives either way."""
    decoder_ = OpusDecoder(16000)
    for packet in packets:
        with contextlib.suppress(CodecError):
            assert len(decoder_.decode(packet)) % 2 == 0
    good = OpusEncoder(16000).encode(b"\x00\x00" * 320 * 3)
    assert all(isinstance(decoder_.decode(packet), bytes) for packet in good)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600).map(lambda tail: b"RIFF\xff\xff\xff\xffWAVE" + tail) | st.binary(max_size=200),
       st.sampled_from([None, 16000]))
def test_uploads_parse_or_fail_with_a_codec_error(data: bytes, raw_rate: int | None) -> None:
    try:
        pcm, rate = read_upload(data, raw_rate)
    except CodecError as exc:
        assert str(exc)
    else:
        assert len(pcm) % 2 == 0 and rate > 0


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.integers(0, 6))
def test_json_depth_check_matches_the_real_depth(value: object, limit: int) -> None:
    from gateway.security import json_too_deep

    text = json.dumps(value)
    assert json_too_deep(text, limit) is (_depth(value) > limit)
    assert json_too_deep(text.encode(), limit) is (_depth(value) > limit)


def test_brackets_inside_strings_do_not_count() -> None:
    from gateway.security import json_too_deep

    assert not json_too_deep(json.dumps({"text": "[[[[{{{{" * 50 + '\\"]'}), 4)
    assert json_too_deep("[" * 40 + "]" * 40)


@pytest.mark.parametrize("text", [
    '{"type": "start", "codec": ' + "[" * 2000 + "]" * 2000 + "}",
    '{"type": "start", "extra": ' + '{"a":' * 650 + "1" + "}" * 650 + "}",
    "[" * 2000 + "]" * 2000,
])
def test_a_deeply_nested_control_message_is_a_bad_message(text: str) -> None:
    """What `parse_client_message` should run first (see gateway/security.check_control_depth):
    msgspec recurses per level and raises RecursionError on such input."""
    from gateway.security import check_control_depth

    with pytest.raises(ProtocolError) as caught:
        check_control_depth(text)
        parse_client_message(text)
    assert caught.value.code in ("bad_message", "message_too_large")
