"""Turn detection: webrtcvad over 20 ms frames, with a pre-roll, a hangover and a length cap.

Pure and deterministic: the decisions depend only on the audio, frame by frame, never on how
the stream was cut into chunks or on the wall clock. Times are milliseconds of audio since the
stream started (frame index × 20).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import webrtcvad

SAMPLE_RATE = 16000
FRAME_MS = 20  # webrtcvad accepts 10, 20 or 30 ms; 20 matches the clients' frame size
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000 * 2

# webrtcvad keeps flagging frames as voiced for ~80 ms after a sound stops (its own hangover, at
# aggressiveness 2 and 3): a 100 ms click shows up as ~180 ms of "speech". Counted out when
# deciding whether voiced frames add up to `min_speech_ms`.
WEBRTC_HANGOVER_MS = 80

EndReason = Literal["silence", "max_length", "closed"]


@dataclass(frozen=True)
class SpeechStart:
    at_ms: int  # onset: start of the first voiced frame of the run that opened the segment


@dataclass(frozen=True)
class SpeechEnd:
    at_ms: int  # end of the last voiced frame (silence) or of the last frame (cap, close)
    start_ms: int  # the matching SpeechStart.at_ms
    pcm: bytes  # the segment's audio, pre-roll included
    reason: EndReason


VadEvent = SpeechStart | SpeechEnd


def _frames(ms: int) -> int:
    return max(0, math.ceil(ms / FRAME_MS))


@dataclass
class _Segment:
    first_frame: int  # where its audio begins (pre-roll included)
    onset_frame: int
    pcm: bytearray
    last_voiced_frame: int
    unvoiced_run: int = 0


class TurnDetector:
    """Opens a segment once voiced frames add up to `min_speech_ms` (plus webrtcvad's own
    hangover) within a window 1.5 times as long (short unvoiced gaps inside the first syllables
    are normal), and closes it after
    `silence_ms` of unvoiced frames or when it reaches `max_segment_ms`.

    While no segment is open, the last `buffer_ms` of audio are kept (for the pre-roll, and for
    push-to-talk turns the VAD never opened).
    """

    def __init__(
        self, aggressiveness: int = 2, *, silence_ms: int = 500, min_speech_ms: int = 200,
        preroll_ms: int = 300, tail_ms: int = 200, max_segment_ms: int = 30_000,
        buffer_ms: int = 30_000,
    ) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)
        self._default_silence_frames = max(1, _frames(silence_ms))
        self._silence_frames = self._default_silence_frames  # this segment's timeout
        self._min_speech_frames = max(1, _frames(min_speech_ms) + _frames(WEBRTC_HANGOVER_MS))
        self._preroll_frames = _frames(preroll_ms)
        # Keep a short tail after the last voiced frame: webrtcvad often calls the soft end of
        # a word (a final fricative) unvoiced.
        self._tail_frames = _frames(tail_ms)
        self._max_segment_frames = max(1, _frames(max_segment_ms))
        window = max(self._min_speech_frames, math.ceil(self._min_speech_frames * 1.5))
        self._recent: deque[bool] = deque(maxlen=window)
        buffered = max(_frames(buffer_ms), window + self._preroll_frames)
        self._idle: deque[tuple[int, bytes]] = deque(maxlen=buffered)
        self._remainder = b""
        self._clock = 0  # frames processed since the stream started
        self._segment: _Segment | None = None

    # --- state ------------------------------------------------------------------------------

    @property
    def elapsed_ms(self) -> int:
        """Audio processed so far (whole frames), in ms since the stream started."""
        return self._clock * FRAME_MS

    @property
    def in_speech(self) -> bool:
        return self._segment is not None

    @property
    def onset_ms(self) -> int | None:
        return None if self._segment is None else self._segment.onset_frame * FRAME_MS

    @property
    def voiced_ms(self) -> int:
        """Open segment's length from onset to the end of its last voiced frame (0 if none)."""
        if self._segment is None:
            return 0
        return (self._segment.last_voiced_frame + 1 - self._segment.onset_frame) * FRAME_MS

    @property
    def silence_ms(self) -> int:
        """Unvoiced audio since the open segment's last voiced frame (0 if none is open)."""
        return 0 if self._segment is None else self._segment.unvoiced_run * FRAME_MS

    @property
    def last_voiced_ms(self) -> int | None:
        """End of the open segment's last voiced frame, in stream ms."""
        return None if self._segment is None else (self._segment.last_voiced_frame + 1) * FRAME_MS

    def segment_pcm(self) -> bytes:
        """Audio of the open segment so far, pre-roll included; empty when none is open."""
        return b"" if self._segment is None else bytes(self._segment.pcm)

    def pending_pcm(self) -> tuple[int, bytes]:
        """(start ms, audio) not yet handed out in a SpeechEnd: the open segment, or else the
        buffered audio since the last segment closed."""
        if self._segment is not None:
            return self._segment.first_frame * FRAME_MS, bytes(self._segment.pcm)
        if not self._idle:
            return self.elapsed_ms, b""
        return self._idle[0][0] * FRAME_MS, b"".join(frame for _, frame in self._idle)

    # --- input ------------------------------------------------------------------------------

    def feed(self, pcm: bytes) -> list[VadEvent]:
        """Process PCM16 mono 16 kHz audio of any length; a partial frame waits for the next."""
        data = self._remainder + pcm
        usable = len(data) - len(data) % FRAME_BYTES
        self._remainder = data[usable:]
        events: list[VadEvent] = []
        for offset in range(0, usable, FRAME_BYTES):
            event = self._step(data[offset : offset + FRAME_BYTES])
            if event is not None:
                events.append(event)
        return events

    def close(self) -> SpeechEnd | None:
        """End the open segment now (push-to-talk end); None when there is none."""
        if self._segment is None:
            return None
        return self._end(self._clock, "closed")

    def set_silence_ms(self, silence_ms: int) -> None:
        """The silence timeout for the open segment only (an end-of-turn model that says "not
        done" lets a hesitant speaker pause longer); the next segment starts at the default."""
        self._silence_frames = max(1, _frames(silence_ms))

    def end_at_pause(self) -> SpeechEnd | None:
        """End the open segment at its last voiced frame now, as the silence timeout would
        have later (the end-of-turn model decided the turn is complete)."""
        if self._segment is None:
            return None
        return self._end(self._segment.last_voiced_frame + 1, "silence")

    def clear(self) -> None:
        """Forget buffered audio and any open segment; the clock keeps running."""
        self._segment = None
        self._idle.clear()
        self._recent.clear()

    def reset(self) -> None:
        """Like `clear`, and also drop a partial frame; the clock still keeps running, since
        the stream itself goes on."""
        self.clear()
        self._remainder = b""

    # --- per frame --------------------------------------------------------------------------

    def _step(self, frame: bytes) -> VadEvent | None:
        index = self._clock
        self._clock += 1
        voiced = self._vad.is_speech(frame, SAMPLE_RATE)
        if self._segment is None:
            return self._step_idle(index, frame, voiced)
        return self._step_speech(self._segment, index, frame, voiced)

    def _step_idle(self, index: int, frame: bytes, voiced: bool) -> SpeechStart | None:
        self._idle.append((index, frame))
        self._recent.append(voiced)
        if sum(self._recent) < self._min_speech_frames:
            return None
        window_start = index - len(self._recent) + 1
        onset = window_start + list(self._recent).index(True)
        first = max(onset - self._preroll_frames, self._idle[0][0])
        pcm = bytearray(b"".join(f for i, f in self._idle if i >= first))
        self._segment = _Segment(first, onset, pcm, last_voiced_frame=index)
        self._silence_frames = self._default_silence_frames
        self._idle.clear()
        self._recent.clear()
        return SpeechStart(onset * FRAME_MS)

    def _step_speech(
        self, segment: _Segment, index: int, frame: bytes, voiced: bool
    ) -> SpeechEnd | None:
        segment.pcm += frame
        if voiced:
            segment.last_voiced_frame = index
            segment.unvoiced_run = 0
        else:
            segment.unvoiced_run += 1
        if segment.unvoiced_run >= self._silence_frames:
            return self._end(segment.last_voiced_frame + 1, "silence")
        # Counted with the pre-roll, so a capped segment still fits one 30 s Whisper window.
        if self._clock - segment.first_frame >= self._max_segment_frames:
            return self._end(self._clock, "max_length")
        return None

    def _end(self, end_frame: int, reason: EndReason) -> SpeechEnd:
        segment = self._segment
        assert segment is not None
        self._segment = None
        cut_frame = min(end_frame + self._tail_frames, self._clock)
        cut = (cut_frame - segment.first_frame) * FRAME_BYTES
        # The unvoiced frames after the cut become the next segment's possible pre-roll.
        for i in range(cut_frame, self._clock):
            offset = (i - segment.first_frame) * FRAME_BYTES
            self._idle.append((i, bytes(segment.pcm[offset : offset + FRAME_BYTES])))
            self._recent.append(False)
        return SpeechEnd(
            at_ms=end_frame * FRAME_MS, start_ms=segment.onset_frame * FRAME_MS,
            pcm=bytes(segment.pcm[:cut]), reason=reason,
        )
