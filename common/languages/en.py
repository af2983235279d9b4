"""English."""

from __future__ import annotations

from common.languages.base import LanguagePack
from common.languages.en_normalize import normalize as speech_text
from common.languages.safety import english_stem

ENGLISH = LanguagePack(
    code="en",
    name="English",
    asr_language="en",
    espeak_voice="en-us",
    speech_text=speech_text,  # "$5.50" -> "five dollars and fifty cents" before espeak-ng
    system_prompt=(
        "You are Inzwa, a friendly voice assistant. Your answers are spoken aloud, so reply in "
        "one or two short, plain sentences without lists, markdown or emojis."
    ),
    fallbacks={
        "did_not_hear": "Sorry, I did not catch that. Could you say it again?",
        "llm_timeout": "Sorry, I am taking too long to think. Please ask me again.",
        "cannot_help": "Sorry, I cannot help with that.",
        "handover": "Let me hand you over to a person who can help.",
        "unavailable": "Sorry, I cannot answer right now. Please try again in a moment.",
        # (overload ladder's last level: a new turn refused while too many are in progress)
        "busy": "Sorry, I am busy with many people right now. Please ask me again in a moment.",
    },
    # Written in plain words: text and patterns are normalized and stemmed alike
    # (common/languages/safety.py), so "Making  BOMBS" meets "make a bomb".
    safety_stem=english_stem,
    blocked_input=(
        ("self_harm", r"\b(kill|hurt|harm|cut) (myself|yourself|yourselves|themselves|himself|herself)\b"),
        ("self_harm", r"\b(commit|attempt) suicide\b"),
        ("violence", r"\b(kill|hurt|murder|stab|shoot|poison) (someone|somebody|people|a person)\b"),
        ("weapons", r"\b(make|build|assemble) (a |an |some )?(pipe )?(bomb|explosive)\b"),
    ),
    blocked_output=(
        ("self_harm", r"\b(kill|hurt|harm) (yourself|yourselves)\b"),
        ("self_harm", r"\byou should (die|commit suicide)\b"),
        ("violence", r"\b(kill|murder|stab|shoot|poison) (someone|somebody|people|a person)\b"),
        ("weapons", r"\b(make|build|assemble) (a |an )?(pipe )?(bomb|explosive)\b"),
    ),
)
