"""End of turn on the real stack: a speaker who pauses mid-sentence is not answered before
finishing (Smart Turn and the text guard hold the turn; the silence timeout alone would not)."""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets

from asr_worker.wer import normalize
from tests import turn_pause_set
from tests.stack import Stack
from tests.test_turn_taking import Conversation

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not turn_pause_set.available(), reason="espeak-ng not installed")]


def test_a_speaker_who_pauses_mid_sentence_is_answered_after_finishing(stack: Stack) -> None:
    # "My favourite food is ... rice and beans.": 600 ms inside the sentence, longer than
    # INZWA_VAD_SILENCE_MS (400), so a timer alone would answer "My favourite food is"; shorter
    # than INZWA_TURN_END_WAIT_MS (700), the wait once the model says "not done".
    item = turn_pause_set.paused_item(2, 600)
    resume = (item.pause_start_ms + item.pause_ms) * 32

    async def run() -> tuple[Conversation, float]:
        async with websockets.connect(stack.url) as ws:
            talk = Conversation(ws)
            await talk.start()
            await talk.stream(item.pcm[:resume])
            resumed_at = time.monotonic()
            await talk.stream(item.pcm[resume:])
            await talk.wait_for(lambda: talk.events("tts.end"), timeout_s=90)
            return talk, resumed_at

    talk, resumed_at = asyncio.run(run())
    finals = talk.events("asr.final")
    assert len(finals) == 1, finals
    # Words from before the pause and from its last word: one final spans the whole sentence.
    # ("bean" or "beans": Whisper hears the espeak plural either way, depending on where the
    # tail decode starts, which depends on when partials ran; not what is tested here.)
    heard = normalize(finals[0]["text"]).split()
    assert {"food", "rice"} <= set(heard) and heard[-1].startswith("bean"), heard
    before = [item for at, item in talk.log if at < resumed_at]
    assert not any(isinstance(e, int) for e in before)  # no reply audio before the rest was said
    assert not [e for e in before if isinstance(e, dict) and e["type"] in ("asr.final", "tts.start")]
