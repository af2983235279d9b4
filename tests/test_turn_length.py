"""The user's turn length against max_audio_seconds (gateway/turn_length.py), in process."""

from __future__ import annotations

from gateway.turn_length import TurnLength

SECOND = 32000  # bytes of PCM16 at 16 kHz


def test_silence_is_no_turn_and_speech_counts_from_its_onset() -> None:
    length = TurnLength(limit_s=2.0)
    assert not any(length.heard(SECOND) for _ in range(5))  # 5 s before anyone speaks
    assert not length.speech_started(at_ms=4500)  # the onset, 0.5 s before what was received
    assert not length.heard(SECOND)  # 1.5 s into the turn
    assert length.heard(SECOND)  # 2.5 s: over, told once
    assert not length.heard(SECOND)


def test_a_final_closes_the_turn_and_a_late_onset_can_be_over_at_once() -> None:
    length = TurnLength(limit_s=1.0)
    length.speech_started(at_ms=0)
    length.heard(SECOND // 2)
    length.closed()  # the ASR's final
    assert not any(length.heard(SECOND) for _ in range(3))
    assert length.speech_started(at_ms=1000)  # audio sent fast: 2.5 s of it already in


def test_manual_turns_count_all_audio_since_the_last_commit() -> None:
    length = TurnLength(limit_s=2.0)
    assert not length.heard(SECOND, manual=True)
    assert not length.heard(SECOND, manual=True)
    assert length.heard(SECOND, manual=True)
    length.closed()  # the commit
    assert not length.heard(SECOND, manual=True)
