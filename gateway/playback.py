"""A client's outbox: JSON events go out at once, reply audio is paced at real time plus a lead.

Pacing is what lets the server know what the person has actually heard: audio leaves the
gateway no faster than it plays, so at a barge-in the unsent rest of the reply is simply dropped
here and the history keeps only the phrases that were sent.

Ordering rules: `tts.start` and `tts.end` travel in the audio lane so they bracket their audio;
everything else (transcripts, tokens, errors, `tts.cancel`) overtakes queued audio. A newer
`asr.partial` replaces an older one still waiting (superseded partials are dropped and counted);
finals, tokens and audio are never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from common.frames import AudioChunk, Frame, TranscriptChunk, TurnEvent
from common.metrics import DROPPED_FRAMES

AUDIO_LANE_EVENTS = ("tts.start", "tts.end")


class SessionClosed(Exception):
    """The session must end: tell the client why (`code`) and close with `close_code`."""

    def __init__(self, code: str, message: str, close_code: int) -> None:
        super().__init__(message)
        self.code, self.message, self.close_code = code, message, close_code


COMFORT_NOISE_LEVEL = 24  # int16 standard deviation: about -63 dBFS, felt rather than heard


@dataclass
class Outbox:
    sample_rate: int = 16000
    lead_s: float = 0.25
    # Tests play the client faster than real time (INZWA_PLAYBACK_SPEED, like a fake session's
    # speed factor): every pacing rule holds, on a clock that runs `speed` times as fast.
    speed: float = 1.0
    limit: int = 6000  # queued frames before the client is declared too slow
    events: deque[Frame] = field(default_factory=deque)
    audio: deque[Frame] = field(default_factory=deque)
    dropped_partials: int = 0
    comfort_frames: int = 0
    overflowed: bool = False
    failure: SessionClosed | None = None
    _speaking: int | None = None  # the turn between its tts.start and tts.end / tts.cancel
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _play_end: float = 0.0  # when the client will have played everything sent so far

    def put(self, frame: Frame) -> None:
        if len(self.events) + len(self.audio) >= self.limit:
            self.overflowed = True
            DROPPED_FRAMES.labels("client_too_slow").inc()
        elif isinstance(frame, TurnEvent) and frame.event == "tts.cancel":
            self.cancel(frame.turn_id)
            self.events.append(frame)
        elif isinstance(frame, AudioChunk) or (
            isinstance(frame, TurnEvent) and frame.event in AUDIO_LANE_EVENTS
        ):
            self.audio.append(frame)
        else:
            self._put_event(frame)
        self._wake.set()

    def _put_event(self, frame: Frame) -> None:
        is_partial = isinstance(frame, TranscriptChunk) and not frame.is_final
        if is_partial and self.events:
            last = self.events[-1]
            if isinstance(last, TranscriptChunk) and not last.is_final:
                self.events[-1] = frame  # superseded before it was sent
                self.dropped_partials += 1
                DROPPED_FRAMES.labels("superseded_partial").inc()
                return
        self.events.append(frame)

    def cancel(self, turn_id: int) -> int:
        """Drop the queued audio of a turn; returns how many frames were dropped."""
        kept = deque(f for f in self.audio if f.turn_id != turn_id)
        dropped = len(self.audio) - len(kept)
        self.audio = kept
        self._play_end = time.monotonic()  # the client drops what it had buffered
        return dropped

    async def next(self) -> Frame:
        """The next frame due to the client, waiting for it (and for its time, if audio)."""
        while True:
            if self.overflowed:
                raise SessionClosed("client_too_slow", "reply audio was not read in time", 1008)
            if self.failure is not None:
                raise self.failure
            if self.events:
                return self._track(self.events.popleft())
            wait = self._audio_wait()
            if wait is not None and wait <= 0:
                return self._track(self._take_audio())
            comfort = self._comfort_wait()
            if comfort is not None and comfort <= 0:
                return self._comfort_noise()
            if comfort is not None:
                wait = comfort if wait is None else min(wait, comfort)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def fail(self, failure: SessionClosed) -> None:
        self.failure = failure
        self._wake.set()

    def _track(self, frame: Frame) -> Frame:
        if isinstance(frame, TurnEvent):
            if frame.event == "tts.start":
                self._speaking = frame.turn_id
            elif frame.event in ("tts.end", "tts.cancel"):
                self._speaking = None
        return frame

    def _comfort_wait(self) -> float | None:
        """During a reply with no audio queued (TTS underrun): when the client's buffer runs
        dry, so comfort noise can fill the gap instead of a hard cut to silence."""
        if self._speaking is None or self.audio:
            return None
        return self._play_end - time.monotonic()

    def _comfort_noise(self) -> AudioChunk:
        samples = self.sample_rate * 20 // 1000
        noise = np.random.default_rng().normal(0, COMFORT_NOISE_LEVEL, samples)
        self.comfort_frames += 1
        frame = AudioChunk(turn_id=self._speaking or 0, payload=noise.astype("<i2").tobytes())
        self._play_end = max(self._play_end, time.monotonic()) + 0.02 / self.speed
        return frame

    def _audio_wait(self) -> float | None:
        if not self.audio:
            return None
        head = self.audio[0]
        if not isinstance(head, AudioChunk) or not head.payload:
            return 0.0  # markers pass as soon as the audio before them has gone
        # Send when the client has no more than `lead_s` of audio left to play; after an
        # underrun `_play_end` is in the past and frames go at once.
        return self._play_end - self.lead_s / self.speed - time.monotonic()

    def _take_audio(self) -> Frame:
        frame = self.audio.popleft()
        if isinstance(frame, AudioChunk) and frame.payload:
            duration = len(frame.payload) / 2 / self.sample_rate / self.speed
            self._play_end = max(self._play_end, time.monotonic()) + duration
        return frame
