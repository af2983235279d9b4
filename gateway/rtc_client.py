"""A WebRTC client for `/rtc/session` with aiortc: speak clips into a track, collect the reply.

Used by the WebRTC tests and the benchmark, as `gateway.client.Talker` is for the WebSocket.
The microphone is a `PcmTrack` playing clips in real time (silence between them), the reply
arrives on the server's audio track (decoded by aiortc, brought to PCM16 16 kHz here) and the
events on the "events" data channel. `v2v_ms` is measured like the WebSocket client's: from
the end of speech in the clip (as played in real time) to the first audible reply frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from gateway.client import AUDIBLE_DBFS, dbfs, speech_end_s
from gateway.rtc_media import Downsampler, PcmTrack


@dataclass
class RtcCall:
    """One WebRTC session as a client sees it."""

    pc: RTCPeerConnection
    mic: PcmTrack
    channel: Any
    session_id: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    event_at: list[float] = field(default_factory=list)  # when each event arrived
    audio: bytearray = field(default_factory=bytearray)  # reply audio heard, PCM16 16 kHz
    audible_at: list[float] = field(default_factory=list)  # when audible reply frames arrived
    reply_from: int | None = None  # offset in `audio` of the first audible reply frame
    quiet_frames: int = 0  # frames received since the last audible one
    # How late frames arrive against their media time (arrival minus RTP time, seconds): the
    # least seen is the path's own delay; a frame much later than that is from a backlog
    lag_least: float | None = None
    lag_last: float = 0.0
    speech_end_at: float | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def on_message(self, message: str | bytes) -> None:
        self.events.append(json.loads(message))
        self.event_at.append(time.monotonic())

    def at(self, event: dict[str, Any]) -> float:
        return self.event_at[next(i for i, e in enumerate(self.events) if e is event)]

    def reply_audio(self) -> bytes:
        """The audio received from the first audible reply frame on."""
        return bytes(self.audio[self.reply_from or 0 :]) if self.reply_from is not None else b""

    def heard_s(self) -> float:
        """Seconds of audible reply received so far."""
        return len(self.audible_at) * 0.02

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    def play(self, pcm: bytes) -> float:
        """Queue a clip on the microphone; returns when its speech will have ended."""
        ahead = self.mic.audio_queued / 32000
        self.mic.push(pcm)
        self.speech_end_at = time.monotonic() + ahead + speech_end_s(pcm)
        return self.speech_end_at

    def send(self, message: dict[str, Any]) -> None:
        self.channel.send(json.dumps(message))

    def v2v_ms(self) -> float | None:
        """End of the last clip's speech to the first audible reply frame after it."""
        if self.speech_end_at is None:
            return None
        later = [t for t in self.audible_at if t > self.speech_end_at]
        return round((later[0] - self.speech_end_at) * 1000, 1) if later else None

    async def wait_for(self, predicate: Any, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout_s} s; events: {[e.get('type') for e in self.events]}")
            await asyncio.sleep(0.02)

    async def drained(self, quiet_s: float = 1.0, timeout_s: float = 30.0) -> None:
        """Wait until the reply audio sent so far has been received: the server marks a reply's
        end (`tts.end`, `turn.metrics`) once its last frame left, but the frames travel
        separately from the events and a busy client decodes them later; `quiet_s` of quiet
        frames received after the last audible one means the client is past the reply."""
        frames = round(quiet_s / 0.02)
        await self.wait_for(lambda: self.reply_from is not None and self.quiet_frames >= frames
                            and self.caught_up(), timeout_s)

    def caught_up(self, slack_s: float = 0.2) -> bool:
        """Whether the frames now arriving are current, not a backlog the sender or this client
        fell behind on: a busy client can hold a reply's later phrases queued behind a second of
        silence it has already decoded (a pause in the reply), which looked drained."""
        return self.lag_least is not None and self.lag_last - self.lag_least <= slack_s

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.mic.stop()
        await self.pc.close()


async def _listen(call: RtcCall, track: Any) -> None:
    down = Downsampler()
    with contextlib.suppress(MediaStreamError):
        while True:
            frame = await track.recv()
            time_frame(call, frame)
            pcm = down.convert(frame)
            if dbfs(pcm) > AUDIBLE_DBFS:
                call.audible_at.append(time.monotonic())
                call.quiet_frames = 0
                if call.reply_from is None:
                    call.reply_from = len(call.audio)
            else:
                call.quiet_frames += 1
            call.audio.extend(pcm)


def time_frame(call: RtcCall, frame: Any) -> None:
    """Note how late `frame` arrived against its media time (`RtcCall.caught_up` reads it)."""
    if frame.pts is None or frame.time_base is None:
        return
    call.lag_last = time.monotonic() - float(frame.pts * frame.time_base)
    if call.lag_least is None or call.lag_last < call.lag_least:
        call.lag_least = call.lag_last


async def connect(http_url: str, *, language: str = "", token: str = "", session_id: str = "",
                  timeout_s: float = 30.0) -> RtcCall:
    """Offer, get the answer, and wait for the connection and `session.started`."""
    pc = RTCPeerConnection()
    call = RtcCall(pc, PcmTrack(), pc.createDataChannel("events"))
    call.channel.on("message", call.on_message)
    pc.addTrack(call.mic)

    @pc.on("track")
    def on_track(track: Any) -> None:
        call.tasks.append(asyncio.create_task(_listen(call, track)))

    await pc.setLocalDescription(await pc.createOffer())
    body = {"sdp": pc.localDescription.sdp, "type": "offer", "language": language,
            "session_id": session_id}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=timeout_s) as http:
        response = await http.post(f"{http_url}/rtc/session", json=body, headers=headers)
    if response.status_code != 200:
        await pc.close()
        raise RuntimeError(f"/rtc/session refused: {response.status_code} {response.text}")
    answer = response.json()
    call.session_id = answer["session_id"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    try:
        await call.wait_for(lambda: call.of("session.started"), timeout_s)
    except TimeoutError:
        await call.close()
        raise
    return call
