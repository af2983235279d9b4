"""A Shona voice session end to end, and language detection among the enabled packs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from common.audio import rms_dbfs
from common.languages import registry
from gateway.client import load_clip
from tests.loopback import LOOPBACK
from tests.stack import Stack
from tests.test_turn_taking import Conversation, silence

pytestmark = pytest.mark.e2e


async def session_in(stack: Stack, language: str, clip: Path,
                     until: str = "tts.end") -> tuple[Conversation, dict[str, Any]]:
    async with websockets.connect(stack.url, max_size=None) as ws:
        talk = Conversation(ws)
        await ws.send(json.dumps({"type": "start", "codec": "pcm16", "sample_rate": 16000,
                                  "language": language}))
        talk.session_id = json.loads(await ws.recv())["session_id"]
        talk._reader = asyncio.create_task(talk._read())
        await talk.stream(load_clip(clip) + silence(500))
        await talk.wait_for(lambda: talk.events(until) or talk.events("error"), timeout_s=90)
        async with httpx.AsyncClient() as http:
            state = (await http.get(f"{stack.http}/v1/sessions/{talk.session_id}")).json()
        return talk, state


@pytest.mark.parametrize("clip", ["q_sn_greeting.wav", "q_sn_weather.wav"])
def test_a_shona_session_speaks_through_the_shona_pack(
    stack: Stack, fixtures_dir: Path, clip: str
) -> None:
    talk, state = asyncio.run(session_in(stack, "sn", fixtures_dir / clip))
    assert not talk.events("error")
    assert talk.events("asr.final") and talk.events("asr.final")[0]["language"] == "sn"
    assert state["language"] == "sn"
    assert state["system_prompt"] == registry.get("sn").system_prompt  # the Shona prompt
    assert talk.events("tts.end")[0]["text"]
    assert len(talk.audio) > 16000 and rms_dbfs(bytes(talk.audio)) > -35
    metrics = LOOPBACK.get(f"{stack.http}/metrics", headers=stack.admin_headers(), timeout=10).text
    shona = [line for line in metrics.splitlines()
             if line.startswith("inzwa_tts_phrases_total") and 'language="sn"' in line]
    assert shona and 'g2p="ShonaPhonemizer"' in shona[0] and float(shona[0].split()[-1]) >= 1


def test_auto_picks_english_for_the_english_fixtures(stack: Stack, fixtures_dir: Path) -> None:
    for clip in ("q_en_capital.wav", "q_en_weather.wav"):
        # Only the final's language is asked: the session ends there, not after the whole
        # spoken reply (~10 s of real-time playback each, which this test never looked at).
        talk, _ = asyncio.run(session_in(stack, "auto", fixtures_dir / clip, until="asr.final"))
        assert talk.events("asr.final")[0]["language"] == "en", (clip, talk.events())
