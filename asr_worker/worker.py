"""The ASR worker process: session audio in, VAD events and transcripts out.

Each session gets its own inbox and task, so sessions never wait on each other's socket
order; when transcription falls behind, the task feeds all queued audio in one call.

Only a SessionStart opens a session's stream: audio or an end of turn for a session this
instance does not hold is dropped and counted (made-up session ids never create state), and a
frame whose audio is out of bounds is refused with a WorkerError instead of being acted on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from asr_worker.interface import ASR
from asr_worker.session import (
    AsrEvent,
    AsrSession,
    Paused,
    SpeechResumed,
    SpeechStarted,
    Transcript,
)
from asr_worker.turn_end import TurnEnd
from common.audio import pcm16_to_float
from common.frames import (
    AsrWork,
    AudioIn,
    ClearAudio,
    EndTurn,
    Frame,
    Segment,
    SessionConfig,
    SessionEnd,
    SessionStart,
    TranscribeRequest,
    TranscriptChunk,
    Transcription,
    TurnHypothesis,
    VadEvent,
    VadEventName,
    WarmupRequest,
    WorkerError,
)
from common.languages import registry as languages
from common.metrics import DROPPED_FRAMES
from common.settings import Settings
from common.worker import WorkerRuntime

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0
BACKLOG_BYTES = 32 * 200  # more than 200 ms of audio queued for one session: we are behind
INBOX_LIMIT = 1500  # queued audio messages per session (30 s of 20 ms frames): beyond, dropped
REPLAY_MARGIN_S = 2.0  # the orchestrator keeps max_audio_seconds plus 2 s to replay a turn
_END_TURN = "end_turn"
_CLEAR = "clear"  # the client took back its audio (OpenAI Realtime input_audio_buffer.clear)
_CLOSE = "close"


@dataclass
class SessionStream:
    session_id: str
    asr: AsrSession
    inbox: asyncio.Queue[bytes | str] = field(default_factory=asyncio.Queue)
    utterance: int = 1
    offset_ms: int = 0  # where this instance's audio starts in the session (after a replay)
    manual: bool = False  # manual turns: every end_turn gets a final, empty if nothing was heard
    partials: bool = True  # off while the orchestrator's overload ladder asks for fewer partials
    said_at: float = field(default_factory=time.monotonic)  # last frame sent for this session
    task: asyncio.Task[None] | None = None


class AsrWorker:
    def __init__(self, engine: ASR, settings: Settings, turn_end: TurnEnd | None = None) -> None:
        self.engine = engine
        self.turn_end = turn_end  # shared by all sessions (it serialises its own calls)
        self.settings = settings
        self.runtime: WorkerRuntime | None = None
        self.streams: dict[str, SessionStream] = {}
        self._feeding = 0  # feeds running in threads now
        self._jobs: set[asyncio.Task[None]] = set()

    async def handle(self, message: AsrWork) -> None:
        refusal = self._refusal(message)
        if refusal is not None:
            await self._refuse(message, refusal)
            return
        match message:
            case SessionStart():
                # A start for a session already here is a reset (stall, or a replay): a fresh
                # decoder and VAD, fed the replayed audio before anything newer.
                old = self.streams.pop(message.session_id, None)
                if old is not None:
                    old.inbox.put_nowait(_CLOSE)
                stream = self._stream(message.session_id, message.language, message.silence_ms)
                stream.offset_ms, stream.manual = message.offset_ms, message.manual_turns
                if message.pcm:
                    stream.inbox.put_nowait(message.pcm)
            case SessionConfig():  # the client's own end-of-turn silence (from its next utterance)
                configured = self.streams.get(message.session_id)
                if configured is not None:
                    configured.asr.set_silence_ms(message.silence_ms or self.settings.vad_silence_ms)
                    configured.manual = message.manual_turns
                    configured.partials = message.partials
            case ClearAudio():  # after the audio before it, before any after it
                self._deliver(message.session_id, _CLEAR)
            case AudioIn():
                self._deliver(message.session_id, message.pcm)
            case EndTurn():
                self._deliver(message.session_id, _END_TURN)
            case SessionEnd():
                ended = self.streams.pop(message.session_id, None)
                if ended is not None:
                    ended.inbox.put_nowait(_CLOSE)
            case TranscribeRequest():
                self._spawn(self._transcribe_file(message))
            case WarmupRequest():
                assert self.runtime is not None
                self._spawn(self.runtime.warm_up(message, self.engine.warmup))

    def _deliver(self, session_id: str, item: bytes | str) -> None:
        """To an open stream only; the orchestrator opens (or replays) with a SessionStart."""
        stream = self.streams.get(session_id)
        if stream is None:
            DROPPED_FRAMES.labels("asr_unknown_session").inc()
        elif isinstance(item, bytes) and stream.inbox.qsize() >= INBOX_LIMIT:
            DROPPED_FRAMES.labels("asr_inbox_full").inc()
        else:
            stream.inbox.put_nowait(item)

    def _refusal(self, message: AsrWork) -> str | None:
        """Why a frame's audio is not acted on (None: it is fine)."""
        if not isinstance(message, SessionStart | AudioIn | TranscribeRequest):
            return None
        limit = int((self.settings.max_audio_seconds + REPLAY_MARGIN_S) * 32000)
        if len(message.pcm) % 2:
            return "audio is not whole PCM16 samples"
        if len(message.pcm) > limit:
            return f"audio longer than {self.settings.max_audio_seconds:g} s"
        return None

    async def _refuse(self, message: AsrWork, reason: str) -> None:
        assert self.runtime is not None
        DROPPED_FRAMES.labels("asr_refused").inc()
        await self.runtime.emit(WorkerError(session_id=message.session_id, turn_id=message.turn_id,
                                            request_id=message.request_id or self.runtime.instance_id,
                                            kind="asr", code="bad_audio", message=reason))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """One-off work runs beside the live sessions (the engine's lock takes turns)."""
        task = asyncio.create_task(work)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _transcribe_file(self, request: TranscribeRequest) -> None:
        """An uploaded recording: one Transcription answer, empty with a reason on failure."""
        assert self.runtime is not None
        language = request.language or self.settings.effective_asr_language
        code = None if language == "auto" else languages.get(language).asr_language
        answer = Transcription(session_id=request.session_id, request_id=request.request_id)
        self.runtime.busy += 1
        try:
            result = await asyncio.to_thread(self.engine.transcribe_file,
                                             pcm16_to_float(request.pcm), code)
            answer.language = result.language
            answer.language_probability = round(result.language_probability, 3)
            answer.duration_ms = round(result.duration_s * 1000)
            answer.segments = [Segment(round(seg.start_s * 1000), round(seg.end_s * 1000),
                                       self._normalized(seg.text, result.language),
                                       round(seg.confidence, 3)) for seg in result.segments]
            answer.text = " ".join(seg.text for seg in answer.segments if seg.text)
        except Exception as exc:
            log.exception("file transcription failed", extra={"session_id": request.session_id})
            await self.runtime.emit(WorkerError(session_id=request.session_id, kind="asr",
                                                request_id=request.request_id, code="asr_failed",
                                                message=f"transcription failed: {type(exc).__name__}"))
            return
        finally:
            self.runtime.busy -= 1
        await self.runtime.emit(answer)

    def _stream(self, session_id: str, language: str = "", silence_ms: int = 0) -> SessionStream:
        stream = self.streams.get(session_id)
        if stream is None:
            stream = SessionStream(session_id, self._new_session(language, silence_ms))
            stream.task = asyncio.create_task(self._run(stream))
            self.streams[session_id] = stream
        return stream

    def _new_session(self, language: str, silence_ms: int = 0) -> AsrSession:
        """The session's language pack decides Whisper's language; "auto" detects it. A
        `silence_ms` the client chose (0: none) replaces the configured end-of-turn silence."""
        language = language or self.settings.effective_asr_language
        code = "auto" if language == "auto" else languages.get(language).asr_language
        return AsrSession.from_settings(self.engine, self.settings, language=code,
                                        turn_end=self.turn_end, silence_ms=silence_ms)

    @staticmethod
    def _normalized(text: str, language: str) -> str:
        """The pack's orthography normalizer for the language the text is in."""
        return languages.get(language).normalize(text) if text else text

    async def _run(self, stream: SessionStream) -> None:
        while True:
            items = [await stream.inbox.get()]
            while not stream.inbox.empty():
                items.append(stream.inbox.get_nowait())
            for item in _coalesce(items):
                if item == _CLOSE:
                    return
                try:
                    await self._process(stream, item)
                except Exception as exc:  # the session goes on; the client hears why
                    log.exception("asr failed", extra={"session_id": stream.session_id})
                    await self._failed(stream, exc)

    async def _failed(self, stream: SessionStream, exc: Exception) -> None:
        assert self.runtime is not None
        await self.runtime.emit(WorkerError(session_id=stream.session_id, turn_id=stream.utterance,
                                            request_id=self.runtime.instance_id, kind="asr",
                                            code="asr_failed",
                                            message=f"speech recognition failed: {type(exc).__name__}"))

    async def _process(self, stream: SessionStream, item: bytes | str) -> None:
        if item == _CLEAR:
            stream.asr.reset()  # (cheap: drops buffers) cleared audio never becomes a transcript
            events = []
        elif item == _END_TURN:
            events = await asyncio.to_thread(stream.asr.end_turn)
            if stream.manual and not any(isinstance(e, Transcript) and e.is_final for e in events):
                # The orchestrator holds a reply the client asked for until this turn's final.
                events.append(Transcript("", True, 0, 0, 0.0, ""))
        else:
            assert isinstance(item, bytes)
            # Partials are best effort: few while this session is behind real time or another
            # session is being transcribed (see AsrSession.feed); finals and pause hypotheses
            # always run.
            congested = len(item) > BACKLOG_BYTES or self._feeding > 0
            if congested:
                DROPPED_FRAMES.labels("partial_skipped_congestion").inc()
            self._feeding += 1
            try:
                events = await asyncio.to_thread(stream.asr.feed, item, partials=stream.partials,
                                                 congested=congested)
            finally:
                self._feeding -= 1
        for event in events:
            await self._emit(stream, event)
        now = time.monotonic()
        if events:
            stream.said_at = now
        elif now - stream.said_at > PROGRESS_EVERY_S:
            # Nothing to say, but the session's audio is being processed: the orchestrator
            # tells a long quiet stretch (partials skipped under load) from a stalled decoder.
            stream.said_at = now
            assert self.runtime is not None
            instance = self.runtime.instance_id
            await self.runtime.emit(VadEvent(session_id=stream.session_id, turn_id=stream.utterance,
                                             request_id=instance, instance_id=instance,
                                             event="progress"))

    async def _emit(self, stream: SessionStream, event: AsrEvent) -> None:
        assert self.runtime is not None
        await self.runtime.emit(self._frame(stream, event))
        if isinstance(event, Transcript) and event.is_final:
            stream.utterance += 1

    def _frame(self, stream: SessionStream, event: AsrEvent) -> Frame:
        """The wire frame for a session event, in the session's timeline."""
        assert self.runtime is not None
        # The instance id lets the orchestrator drop results of an instance it has left (in
        # `request_id` too, for orchestrators older than `instance_id`).
        instance = self.runtime.instance_id
        sid, turn, offset = stream.session_id, stream.utterance, stream.offset_ms
        match event:
            case SpeechStarted() | SpeechResumed():
                name: VadEventName = "speech_start" if isinstance(event, SpeechStarted) else "speech_resume"
                return VadEvent(session_id=sid, turn_id=turn, request_id=instance, instance_id=instance,
                                event=name, at_ms=event.at_ms + offset)
            case Paused():
                return TurnHypothesis(session_id=sid, turn_id=turn, request_id=instance,
                                      instance_id=instance, at_ms=event.at_ms + offset,
                                      text=self._normalized(event.text, event.language),
                                      language=event.language)
            case Transcript():
                return TranscriptChunk(
                    session_id=sid, turn_id=turn, request_id=instance, instance_id=instance,
                    text=self._normalized(event.text, event.language), is_final=event.is_final,
                    start_ms=event.start_ms + offset, end_ms=event.end_ms + offset,
                    confidence=event.confidence, language=event.language,
                )


def _coalesce(items: list[bytes | str]) -> list[bytes | str]:
    """Join runs of audio into one chunk so a backlog costs one feed, not hundreds."""
    out: list[bytes | str] = []
    for item in items:
        if isinstance(item, bytes) and out and isinstance(out[-1], bytes):
            out[-1] = out[-1] + item
        else:
            out.append(item)
    return out
