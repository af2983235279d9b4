"""The WebRTC transport of a voice session: one aiortc peer connection per client.

The client offers (non-trickle: its offer already holds its candidates) a microphone track
and a data channel labelled "events"; the answer comes after the server's ICE gathering is
complete (aiortc's `setLocalDescription` waits for it). From then on:

- the client's audio track is decoded by aiortc, turned into PCM16 mono 16 kHz
  (`rtc_media.Downsampler`) and fed to the same `VoiceSession.on_audio` as WebSocket audio;
- the "events" channel carries the same JSON events and control messages as the WebSocket;
- reply audio leaves the same paced Outbox into one `PcmTrack`, which aiortc sends as 20 ms
  Opus frames in real time; `tts.cancel` clears what the track still holds.

A peer is ended, and counted in `inzwa_rtc_peers_closed_total{reason}`, when it does not
connect within `rtc_connect_timeout_s` (connect_timeout), its connection fails (failed) or is
closed (closed), its audio stops for `rtc_media_timeout_s` (media_timeout), or the session ends
(its error code: idle_timeout, client_too_slow, orchestrator_unavailable, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError
from prometheus_client import Counter

from common.metrics import DROPPED_FRAMES
from common.settings import Settings
from gateway.bridge import Bridge
from gateway.errors import ApiError
from gateway.guard import Guard
from gateway.protocol import ProtocolError, Start, error_event
from gateway.rtc_media import Downsampler, PcmTrack
from gateway.session import Action, TransportClosed, VoiceSession

log = logging.getLogger(__name__)

RTC_PEERS_CLOSED = Counter("inzwa_rtc_peers_closed_total", "WebRTC peers ended, by reason", ["reason"])
for _reason in ("connect_timeout", "failed", "closed", "media_timeout", "refused"):
    RTC_PEERS_CLOSED.labels(_reason)
EVENTS_LABEL = "events"
INBOX = 32  # control messages waiting on one peer; a flood beyond it is dropped and counted
PENDING_EVENTS = 256  # events held until the data channel opens
CLOSE_GOING_AWAY = 1001  # the WebSocket code for the same; WebRTC has no close code


def rtc_configuration(settings: Settings) -> RTCConfiguration:
    servers = [RTCIceServer(urls=entry["urls"], username=_str(entry.get("username")),
                            credential=_str(entry.get("credential")))
               for entry in settings.rtc_ice_servers]
    return RTCConfiguration(iceServers=servers or None)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


class RtcTransport:
    """Events over the "events" data channel (held until it opens), audio on a PcmTrack."""

    def __init__(self, on_close: Any) -> None:
        self.track = PcmTrack()
        self.channel: Any = None
        self._pending: list[str] = []
        self._on_close = on_close

    def attach(self, channel: Any) -> None:
        self.channel = channel
        for text in self._pending:
            channel.send(text)
        self._pending.clear()

    async def send_event(self, event: dict[str, Any]) -> None:
        text = orjson.dumps(event).decode()
        if self.channel is None:
            if len(self._pending) >= PENDING_EVENTS:
                raise TransportClosed("the events channel never opened")
            self._pending.append(text)
            return
        if self.channel.readyState != "open":
            raise TransportClosed("the events channel is closed")
        self.channel.send(text)

    async def send_audio(self, pcm: bytes) -> None:
        self.track.push(pcm)

    async def end_audio(self) -> None:
        return None  # aiortc's encoder runs continuously; nothing is held per reply

    def drop_audio(self) -> None:
        self.track.clear()

    async def after_audio(self, action: Action) -> None:
        self.track.mark(action)

    async def close(self, event: dict[str, Any], close_code: int) -> None:
        with contextlib.suppress(TransportClosed):
            await self.send_event(event)
        await self._on_close(str(event.get("code") or "closed"))


class RtcPeer:
    def __init__(self, bridge: Bridge, settings: Settings, guard: Guard, peers: set[RtcPeer]) -> None:
        self.settings = settings
        self.peers = peers
        self.pc = RTCPeerConnection(rtc_configuration(settings))
        self.transport = RtcTransport(self.end)
        self.session = VoiceSession(bridge, settings, guard, self.transport)
        self.inbox: asyncio.Queue[str | None] = asyncio.Queue(INBOX)  # None: a binary message
        self.connected = asyncio.Event()
        self.ended = asyncio.Event()
        self.reason = ""
        self.media_at = time.monotonic()
        self.tasks: list[asyncio.Task[None]] = []
        self._closed = False

    async def answer(self, offer: dict[str, Any], token: str | None, host: str) -> dict[str, str]:
        """Admit, negotiate and open; the answer SDP. Raises ApiError (the caller closes us)."""
        start = Start(session_id=offer.get("session_id") or "", language=offer.get("language") or "")
        try:
            await self.session.admit(token, host, start)
        except ProtocolError as exc:
            raise ApiError(400, exc.code, exc.message) from None
        self.pc.on("datachannel", self._on_channel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)
        self.pc.addTrack(self.transport.track)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
            if not any(t.kind == "audio" and t.mid is not None for t in self.pc.getTransceivers()):
                raise ValueError("the offer has no audio track")
            if self.pc.sctp is None:
                raise ValueError(f"the offer has no data channel (create one labelled {EVENTS_LABEL!r})")
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            self._shorten_jitter_buffers()
        except Exception as exc:  # aiortc's SDP parser raises whatever it trips on (client input)
            raise ApiError(400, "bad_sdp", f"the offer could not be used: {exc!r}"[:300]) from None
        await self.session.open()
        audio_out = {"codec": "opus", "sample_rate": 48000, "frame_ms": 20}
        await self.transport.send_event(self.session.started_event(audio_out))
        self.peers.add(self)
        self.tasks = [asyncio.create_task(coro) for coro in
                      (self._lifetime(), self._run_messages(), self._run_marks())]
        return {"sdp": self.pc.localDescription.sdp, "type": "answer", "session_id": self.session.client_id}

    # --- lifetime --------------------------------------------------------------------------------

    async def _lifetime(self) -> None:
        try:
            await asyncio.wait_for(self.connected.wait(), self.settings.rtc_connect_timeout_s)
        except TimeoutError:
            await self.end("connect_timeout")
            return
        while not self.ended.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ended.wait(), 0.5)
            if time.monotonic() - self.media_at > self.settings.rtc_media_timeout_s:
                limit = self.settings.rtc_media_timeout_s
                await self.transport.close(error_event(  # said on the channel if it still works
                    "media_timeout", f"no audio from the client for {limit:g} s"), CLOSE_GOING_AWAY)

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self.media_at = time.monotonic()
            self.connected.set()
        elif state in ("failed", "closed"):
            await self.end(state)

    async def end(self, reason: str) -> None:
        """End the peer and its session, once; counted by reason."""
        if self._closed:
            return
        self._closed = True
        self.reason = reason
        self.ended.set()
        RTC_PEERS_CLOSED.labels(reason).inc()
        log.info("webrtc peer closed", extra={"session_id": self.session.session_id, "reason": reason})
        self.peers.discard(self)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        await self.session.close(reason)
        self.transport.track.stop()
        with contextlib.suppress(Exception):
            await self.pc.close()

    # --- the client's audio and messages -------------------------------------------------------

    def _on_track(self, track: Any) -> None:
        if track.kind == "audio" and not any(t.get_name() == "rtc-audio-in" for t in self.tasks):
            self.tasks.append(asyncio.create_task(self._read_audio(track), name="rtc-audio-in"))

    def _shorten_jitter_buffers(self) -> None:
        """aiortc holds 4 received audio frames (80 ms) before decoding one, to smooth playout.
        The uplink here feeds an ASR, not a speaker: nothing plays it, so 80 ms of hold is pure
        latency and a rare reordered packet is an acceptable loss. Keep `rtc_uplink_prefetch`
        frames instead (private aiortc state: skipped, with a log line, if it ever moves)."""
        for receiver in self.pc.getReceivers():
            if receiver.track is None or receiver.track.kind != "audio":
                continue
            if not hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"):
                log.warning("aiortc's jitter buffer not found; keeping its default hold")
                return
            receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(
                capacity=16, prefetch=self.settings.rtc_uplink_prefetch)

    async def _read_audio(self, track: Any) -> None:
        down = Downsampler()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.media_at = time.monotonic()
            if not await self.session.on_audio(down.convert(frame)):
                return

    def _on_channel(self, channel: Any) -> None:
        if channel.label != EVENTS_LABEL or self.transport.channel is not None:
            channel.close()  # one events channel per peer; nothing else is spoken here
            return
        channel.on("message", self._on_channel_message)
        if channel.readyState == "open":
            self.transport.attach(channel)
        else:
            channel.on("open", lambda: self.transport.attach(channel))

    def _on_channel_message(self, message: str | bytes) -> None:
        try:  # SCTP bounds a message (aiortc: 64 KiB); the session refuses > MAX_CONTROL_CHARS
            self.inbox.put_nowait(message if isinstance(message, str) else None)
        except asyncio.QueueFull:
            DROPPED_FRAMES.labels("rtc_inbox_full").inc()

    async def _run_messages(self) -> None:
        with contextlib.suppress(TransportClosed):
            while True:
                text = await self.inbox.get()
                if text is None:
                    await self.transport.send_event(error_event(
                        "bad_message", "the events channel takes JSON text; audio goes on the track"))
                    continue
                await self.session.on_message(text)

    async def _run_marks(self) -> None:
        with contextlib.suppress(TransportClosed):
            while True:
                action = await self.transport.track.next_due()
                await action()
