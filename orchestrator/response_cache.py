"""The response cache (issue 13): a deterministic chat reply is generated once and served again.

Only when the LLM samples at temperature 0 (`llm_temperature`, the workers' setting): then the
same prompt on the same model gives the same reply, and a hit skips the LLM entirely.
Key: SHA-256 of the full prompt the model would see (the server's system prompt, the caller's
history, the user's text), the language, the token budget and the model's identity (its weights'
sha256, or name/version for a remote model). A prompt with history is personal: it is keyed
with the caller's principal too, so it is never served to another principal; a prompt without
history (one user message) is shared. A job with history but no principal is not cached.
Bounded by TTL (30 min) and entries (5000), least recently used out first (common/lru.py).
"""

from __future__ import annotations

import hashlib

import msgspec

from common.frames import ChatMessage, GenerateRequest
from common.lru import TtlLru
from common.settings import Settings
from orchestrator.registry import Instance

NAME = "response"
MAX_BYTES = 64 * 1024 * 1024  # a bound in bytes too: 5000 long replies stay well under it


def has_history(messages: list[ChatMessage]) -> bool:
    """More than the user's one message: earlier turns make the prompt the caller's own."""
    return any(m.role == "assistant" for m in messages) or sum(m.role == "user" for m in messages) > 1


def model_identity(instance: Instance) -> str:
    info = instance.info
    return info.get("sha256") or f"{info.get('name') or instance.model}:{info.get('version', '')}"


def response_key(request: GenerateRequest, *, model: str, principal: str) -> str:
    prompt = [[m.role, m.content] for m in request.messages]
    payload = msgspec.json.encode({"prompt": prompt, "language": request.language, "model": model,
                                   "max_new_tokens": request.max_new_tokens, "principal": principal})
    return hashlib.sha256(payload).hexdigest()


def _tokens_size(tokens: list[str]) -> int:
    return sum(len(t) for t in tokens) + 16 * len(tokens)


class ResponseCache:
    def __init__(self, settings: Settings) -> None:
        self.lru: TtlLru[list[str]] = TtlLru(NAME, entries=settings.response_cache_entries,
                                             max_bytes=MAX_BYTES, ttl_s=settings.response_cache_ttl_s,
                                             size=_tokens_size)
        self.enabled = settings.llm_temperature == 0 and self.lru.enabled

    def key(self, request: GenerateRequest, instance: Instance, principal: str) -> str:
        """The request's key on this instance's model; "" when it must not be cached."""
        if not self.enabled or request.prefix:  # (a replay continues someone's partial reply)
            return ""
        personal = has_history(request.messages)
        if personal and not principal:
            return ""
        return response_key(request, model=model_identity(instance),
                            principal=principal if personal else "")

    def get(self, key: str) -> list[str] | None:
        """The reply's tokens as the worker sent them, the last one final (counted as hit/miss)."""
        return self.lru.get(key) if key else None

    def put(self, key: str, tokens: list[str]) -> None:
        if key and tokens:
            self.lru.put(key, list(tokens))
