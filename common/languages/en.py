"""English."""

from __future__ import annotations

from common.languages.base import LanguagePack

ENGLISH = LanguagePack(
    code="en",
    name="English",
    asr_language="en",
    espeak_voice="en-us",
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
    },
    blocked_input=(r"\b(kill|hurt) (myself|yourself|someone)\b", r"\bmake (a )?bomb\b"),
)
