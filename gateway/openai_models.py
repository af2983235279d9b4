"""The model ids (and voices) an OpenAI client may name, mapped onto the models Inzwa runs.

The stable ids are the configured catalogue names (`asr_model`, `llm_model`, `tts_model`, as
`GET /v1/models` lists them). With `openai_aliases` on, OpenAI's own ids for the same job are
accepted too, so a client written against OpenAI works with only `base_url` changed:
`whisper-1` / `gpt-4o(-mini)-transcribe` -> the ASR, `tts-1(-hd)` / `gpt-4o-mini-tts` -> the voice,
`gpt-realtime*` / `gpt-4o(-mini)-realtime-preview*` -> a voice session, and OpenAI's voice names
(alloy, ash, ...) -> the loaded voice. Anything else is a 404 `model_not_found`.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from common.settings import Settings
from gateway.errors import ApiError

Role = Literal["asr", "llm", "tts", "realtime"]

_ALIASES: dict[Role, tuple[str, ...]] = {
    "asr": ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"),
    "tts": ("tts-1", "tts-1-hd", "gpt-4o-mini-tts"),
    "llm": (),
    "realtime": ("gpt-realtime", "gpt-realtime-mini", "gpt-4o-realtime-preview",
                 "gpt-4o-mini-realtime-preview"),
}
_REALTIME_ID = "inzwa-realtime"
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
                 "shimmer", "verse", "marin", "cedar")


def short_name(model: str) -> str:
    """A catalogue name, or a local directory's last part (what the workers report)."""
    return model.rstrip("/").rsplit("/", 1)[-1]


def own_ids(settings: Settings, role: Role) -> tuple[str, ...]:
    """The configured name(s) for a role (a realtime session answers with the LLM's name too)."""
    if role == "realtime":
        return (_REALTIME_ID, short_name(settings.llm_model))
    return (short_name({"asr": settings.asr_model, "llm": settings.llm_model,
                        "tts": settings.tts_model}[role]),)


def accepted_ids(settings: Settings, role: Role) -> tuple[str, ...]:
    aliases = _ALIASES[role] if settings.openai_aliases else ()
    return own_ids(settings, role) + aliases


def check_model(settings: Settings, role: Role, model: str) -> str:
    """`model` when it names this role's model; else a 404 model_not_found (OpenAI's answer)."""
    accepted = accepted_ids(settings, role)
    if model not in accepted:
        raise ApiError(404, "model_not_found",
                       f"The model {model!r} does not exist here; use one of {list(accepted)}")
    return model


def check_voice(settings: Settings, voice: str | None) -> str:
    """The loaded voice's name for a requested one (OpenAI's names alias it); else a 400."""
    loaded = short_name(settings.tts_model)
    if voice in (None, "", loaded) or (settings.openai_aliases and voice in OPENAI_VOICES):
        return loaded
    raise ApiError(422, "unknown_voice", f"voice {voice!r} is not loaded; use {loaded!r}")


_STARTED = int(time.time())  # OpenAI's `created`: the models here are as old as this process


def model_list(body: dict[str, Any]) -> dict[str, Any]:
    """`GET /v1/models` in OpenAI's list shape: each loaded model as {"id", "object": "model",
    "created", "owned_by"} plus Inzwa's own fields (role, version, sha256, device, engine,
    instances). `models` and `missing` stay as they were, for readers of the older shape."""
    data = [{"id": model["name"], "object": "model", "created": _STARTED, "owned_by": "inzwa", **model}
            for model in body["models"]]
    return {"object": "list", "data": data, **body}
