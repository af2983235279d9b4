"""`inzwa certs` (a self-signed pair that a real TLS server and client accept) and
`inzwa talk --mic` (its conversation loop against the real stack, with a fixture in place of the
sound card; and the message where PortAudio is missing)."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import ipaddress
import os
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from fastapi import FastAPI

from common.audio import frame_bytes
from deploy.certs import instructions, make_certificate
from deploy.mic import MISSING_PACKAGE, MicTalker
from gateway.client import load_clip
from tests.loopback import LOOPBACK
from tests.stack import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_certs_names_and_key_permissions(tmp_path: Path) -> None:
    files = make_certificate(tmp_path, extra_names=["inzwa.lan", "10.9.8.7"], days=7)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "inzwa.lan"} <= set(names.get_values_for_type(x509.DNSName))
    ips = set(names.get_values_for_type(x509.IPAddress))
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.9.8.7")} <= ips
    assert (files.key.stat().st_mode & 0o777) == 0o600
    assert f"INZWA_TLS_CERTFILE={files.cert.resolve()}" in instructions(files, 8000)
    with pytest.raises(FileExistsError):
        make_certificate(tmp_path)
    assert make_certificate(tmp_path, force=True).sha256 != files.sha256


def test_certs_serve_https_that_a_client_trusting_them_accepts(tmp_path: Path) -> None:
    files = make_certificate(tmp_path)
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"ok": "yes"}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           ssl_certfile=str(files.cert), ssl_keyfile=str(files.key)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        trusting = ssl.create_default_context(cafile=str(files.cert))
        for host in ("127.0.0.1", "localhost"):  # both names are in the certificate
            reply = httpx.get(f"https://{host}:{port}/ping", verify=trusting, timeout=10)
            assert reply.json() == {"ok": "yes"}
        with pytest.raises(httpx.ConnectError):  # and an ordinary client does not trust it
            LOOPBACK.get(f"https://127.0.0.1:{port}/ping", timeout=10)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.skipif(importlib.util.find_spec("sounddevice") is not None,
                    reason="sounddevice is installed here: the missing-package message cannot show")
def test_talk_mic_without_sounddevice_says_what_to_install() -> None:
    done = subprocess.run([sys.executable, "-m", "deploy.cli", "talk", "--mic"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={**os.environ})
    assert done.returncode == 2
    assert MISSING_PACKAGE in done.stderr


class FixtureSoundCard:
    """The sound card's side of SoundDevices: a fixture clip as the microphone (then silence,
    like a room), and the reply audio kept instead of played."""

    def __init__(self, pcm: bytes) -> None:
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()
        step = frame_bytes(20)
        self.clip = [pcm[offset:offset + step] for offset in range(0, len(pcm) - step + 1, step)]
        self.played = bytearray()
        self.flushes = 0

    async def feed(self) -> None:
        """The clip, then silence, at real time like a microphone."""
        start = time.monotonic()
        for index in range(3000):  # one minute at most
            self.frames.put_nowait(self.clip[index] if index < len(self.clip) else bytes(frame_bytes(20)))
            await asyncio.sleep(max(0.0, start + (index + 1) * 0.02 - time.monotonic()))

    def push(self, pcm: bytes) -> None:
        self.played.extend(pcm)

    def flush(self) -> None:
        self.flushes += 1

    def playing(self) -> bool:
        return False


@pytest.mark.e2e
def test_talk_mic_conversation_loop_against_the_stack(stack: Any, fixtures_dir: Path) -> None:
    card = FixtureSoundCard(load_clip(fixtures_dir / "q_en_capital.wav"))
    talker = MicTalker(card, out=io.StringIO())  # type: ignore[arg-type]  # a stand-in sound card

    async def converse() -> None:
        microphone = asyncio.create_task(card.feed())
        try:  # the mic loop never ends a turn itself: the server's VAD does, then the reply plays
            await asyncio.wait_for(talker.run(stack.url, timeout_s=60), 60)
        except TimeoutError:
            pass
        finally:
            microphone.cancel()

    async def until_reply() -> None:
        task = asyncio.create_task(converse())
        deadline = time.monotonic() + 60
        while not any(e.get("type") == "tts.end" for e in talker.result.events):
            assert time.monotonic() < deadline and not task.done(), talker.result.events[-5:]
            await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(until_reply())
    finals = " ".join(e["text"] for e in talker.result.events if e.get("type") == "asr.final").lower()
    assert "capital" in finals and "zimbabwe" in finals
    assert len(card.played) > frame_bytes(500)  # over half a second of reply audio reached the speaker
    assert talker.result.errors == []
