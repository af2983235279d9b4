"""`inzwa talk --mic`: a conversation through this machine's default microphone and speaker.

PortAudio (through the optional `sounddevice` package, `pip install -e '.[mic]'`) captures 20 ms
PCM16 frames at 16 kHz and plays the reply; the WebSocket protocol is gateway/client.py's `Talker`.
PortAudio has no echo canceller, so on speakers the assistant would hear itself and interrupt
itself: while a reply plays the microphone sends silence, unless `--barge-in` (use headphones).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from typing import Any, TextIO

from common.audio import SAMPLE_RATE, frame_bytes
from gateway.client import Talker

FRAME_MS = 20
QUEUE_FRAMES = 50  # one second of microphone audio; older frames are dropped if the network stalls
MISSING_PACKAGE = ("inzwa talk --mic needs the sounddevice package: pip install -e '.[mic]' "
                   "(and the PortAudio library: apt-get install libportaudio2, or brew install portaudio)")
MISSING_LIBRARY = ("inzwa talk --mic needs the PortAudio library, which was not found: "
                   "apt-get install libportaudio2 (Debian/Ubuntu) or brew install portaudio (macOS)")


class MicUnavailable(RuntimeError):
    """No way to use a microphone here; the message says what to install or check."""


def load_sounddevice() -> Any:
    try:
        import sounddevice
    except ImportError:
        raise MicUnavailable(MISSING_PACKAGE) from None
    except OSError:  # the package is there but libportaudio is not
        raise MicUnavailable(MISSING_LIBRARY) from None
    return sounddevice


class SoundDevices:
    """The default input and output at 16 kHz mono PCM16; PortAudio runs them on its own threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        sd = load_sounddevice()
        self.loop = loop
        self.frames: asyncio.Queue[bytes] = asyncio.Queue(maxsize=QUEUE_FRAMES)
        self.pending = bytearray()  # reply audio not yet played
        self.lock = threading.Lock()
        size = SAMPLE_RATE * FRAME_MS // 1000
        try:
            self.input = sd.RawInputStream(samplerate=SAMPLE_RATE, channels=1, dtype="int16",
                                           blocksize=size, callback=self._captured)
            self.output = sd.RawOutputStream(samplerate=SAMPLE_RATE, channels=1, dtype="int16",
                                             blocksize=size, callback=self._play)
        except Exception as exc:  # PortAudioError, or no default device at all
            raise MicUnavailable(f"cannot open the default microphone and speaker: {exc}") from None

    def start(self) -> None:
        self.input.start()
        self.output.start()

    def close(self) -> None:
        for stream in (self.input, self.output):
            stream.stop()
            stream.close()

    def _captured(self, data: Any, _frames: int, _time: Any, _status: Any) -> None:
        self.loop.call_soon_threadsafe(self._enqueue, bytes(data))

    def _enqueue(self, frame: bytes) -> None:
        if self.frames.full():
            self.frames.get_nowait()  # keep the newest audio: late speech is worse than lost silence
        self.frames.put_nowait(frame)

    def _play(self, out: Any, _frames: int, _time: Any, _status: Any) -> None:
        with self.lock:
            size = len(out)
            chunk = bytes(self.pending[:size])
            del self.pending[:size]
        out[: len(chunk)] = chunk
        out[len(chunk):] = b"\x00" * (size - len(chunk))

    def push(self, pcm: bytes) -> None:
        with self.lock:
            self.pending.extend(pcm)

    def flush(self) -> None:
        with self.lock:
            self.pending.clear()

    def playing(self) -> bool:
        with self.lock:
            return bool(self.pending)


class MicTalker(Talker):
    """Talker with the microphone as its source and the speaker as its sink, for many turns."""

    def __init__(self, devices: SoundDevices, *, barge_in: bool = False, out: TextIO = sys.stdout) -> None:
        super().__init__(b"", end_turn=False)
        self.devices = devices
        self.barge_in = barge_in
        self.out = out
        self.replying = False  # from tts.start until tts.end or tts.cancel

    def muted(self) -> bool:
        return not self.barge_in and (self.replying or self.devices.playing())

    async def _send(self, ws: Any) -> None:
        silence = bytes(frame_bytes(FRAME_MS))
        while True:
            frame = await self.devices.frames.get()
            await ws.send(silence if self.muted() else frame)  # silence keeps the server's clock true

    async def _receive(self, ws: Any) -> None:
        async for message in ws:
            if isinstance(message, bytes):
                self.devices.push(message)
                self.result.reply_audio.extend(message)
                continue
            event = json.loads(message)
            self.result.events.append(event)
            self.show(event)

    def show(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "asr.partial":
            self.out.write(f"\r  … {event.get('text', '')}")
        elif kind == "asr.final":
            self.out.write(f"\ryou: {event.get('text', '')}\ninzwa: ")
        elif kind == "llm.partial":
            self.out.write(event.get("token", ""))
        elif kind == "tts.start":
            self.replying = True
        elif kind in ("tts.end", "tts.cancel"):
            self.replying = False
            if kind == "tts.cancel":
                self.devices.flush()
                self.out.write("  [interrupted]")
            self.out.write("\n")
        elif kind == "error":
            self.result.errors.append(event)
            self.out.write(f"\nerror: {event.get('code')}: {event.get('message')}\n")
        self.out.flush()


async def talk_mic(url: str, *, language: str = "", barge_in: bool = False,
                   timeout_s: float = 3600.0) -> int:
    devices = SoundDevices(asyncio.get_running_loop())
    talker = MicTalker(devices, barge_in=barge_in)
    hint = "" if barge_in else " (microphone muted while it speaks: --barge-in with headphones)"
    print(f"talking to {url}: speak; Ctrl-C ends{hint}", file=sys.stderr)
    devices.start()
    try:
        result = await talker.run(url, language=language, timeout_s=timeout_s)
    finally:
        devices.close()
    return 1 if result.errors else 0
