"""A labelled pause set for end-of-turn decisions, generated with espeak-ng at test time.

Each item is one English utterance. "paused" items hold a pause INSIDE the sentence (an SSML
break, so espeak-ng keeps the phrase's non-final intonation before it, as a person who is
looking for a word does): ending the turn there is a premature commit. "complete" items are
whole questions and requests with no inner pause: the turn should end at the first short pause
after them, and waiting for the silence timeout is a late end. Nothing is committed as audio.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

from common.audio import float_to_pcm16, pcm16_to_float, resample_pcm16

SAMPLE_RATE = 16000
TAIL_S = 1.5  # silence after the utterance: longer than any timeout under test
LEAD_S = 0.3

# (before the pause, after it): the words before it cannot stand as the whole request.
PAUSED = [
    ("I want to go to", "the market"),
    ("Can you tell me", "what the weather is like tomorrow"),
    ("My favourite food is", "rice and beans"),
    ("Please remind me to", "call my mother"),
    ("What time does the", "bus leave"),
    ("I need to buy some", "bread and milk"),
    ("How do I get to", "the hospital"),
    ("The meeting is on", "Monday morning"),
    ("Could you play some", "music for me"),
    ("I was thinking about", "going to Harare"),
    ("Tell me a story about", "a clever hare"),
    ("Is it going to", "rain today"),
    ("I would like to", "book a table for two"),
    ("Where can I find", "a good doctor"),
    ("Turn off the", "lights in the kitchen"),
    ("Do you know how far", "it is to Bulawayo"),
    ("I am looking for", "my keys"),
    ("Set an alarm for", "six in the morning"),
    ("Send a message to", "my brother"),
    ("What is the best way to", "learn Shona"),
]
PAUSES_MS = (400, 700, 1000)  # hesitations people make; cycled over the items

COMPLETE = [
    "What is the capital city of Zimbabwe?",
    "Will it rain in Harare tomorrow?",
    "Tell me a joke.",
    "How are you today?",
    "Please turn on the lights.",
    "What time is it?",
    "Can you help me find a good restaurant?",
    "I would like a cup of tea.",
    "Where is the nearest hospital?",
    "Thank you very much.",
]


@dataclass(frozen=True)
class PauseItem:
    name: str
    text: str  # the whole utterance
    pcm: bytes  # PCM16 mono 16 kHz, with LEAD_S before and TAIL_S after
    pause_ms: int  # the inner pause asked for (0: none)
    speech_end_ms: int  # the acoustic end of the whole utterance, in the clip
    pause_start_ms: int  # where the inner pause starts (== speech_end_ms when there is none)


def available() -> bool:
    return shutil.which("espeak-ng") is not None


def _speak(ssml: str, voice: str = "en-us") -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-m", "-v", voice, "-s", "165", "--stdout", ssml],
                         check=True, capture_output=True, timeout=30).stdout
    # espeak-ng's --stdout is a 44-byte-header WAV of PCM16 mono at 22,050 Hz.
    pcm = resample_pcm16(wav[44:], 22050, SAMPLE_RATE)
    return pcm16_to_float(pcm)


def _voiced_runs(audio: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) in 10 ms frames of runs louder than -45 dBFS."""
    frames = audio[: audio.size // 160 * 160].reshape(-1, 160)
    loud = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)) + 1e-9) > -45
    runs, start = [], None
    for i, on in enumerate(loud):
        if on and start is None:
            start = i
        if not on and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(loud)))
    return runs


def _item(name: str, ssml: str, text: str, pause_ms: int) -> PauseItem:
    audio = _speak(ssml)
    runs = _voiced_runs(audio)
    first, last = runs[0][0] * 160, runs[-1][1] * 160
    audio = audio[first:last]
    gaps = [(b[0] - a[1], a[1]) for a, b in itertools.pairwise(runs)]
    # The inner pause is the longest gap between voiced runs (words in a phrase touch).
    pause_start = (max(gaps)[1] * 160 - first) if pause_ms and gaps else audio.size
    lead = np.zeros(int(LEAD_S * SAMPLE_RATE), np.float32)
    tail = np.zeros(int(TAIL_S * SAMPLE_RATE), np.float32)
    pcm = float_to_pcm16(np.concatenate([lead, audio, tail]))
    offset = lead.size
    return PauseItem(name, text, pcm, pause_ms, (offset + audio.size) * 1000 // SAMPLE_RATE,
                     (offset + pause_start) * 1000 // SAMPLE_RATE)


def paused_item(index: int, pause_ms: int) -> PauseItem:
    """PAUSED[index] with an inner pause of `pause_ms`."""
    before, after = PAUSED[index]
    ssml = f'<speak>{before} <break time="{pause_ms}ms"/> {after}.</speak>'
    return _item(f"paused{index:02d}", ssml, f"{before} {after}.", pause_ms)


def generate() -> list[PauseItem]:
    """All items: the paused ones first, then the complete ones."""
    items = []
    for i in range(len(PAUSED)):
        items.append(paused_item(i, PAUSES_MS[i % len(PAUSES_MS)]))
    for i, text in enumerate(COMPLETE):
        items.append(_item(f"complete{i:02d}", f"<speak>{text}</speak>", text, 0))
    return items
