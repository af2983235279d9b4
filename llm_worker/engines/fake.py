"""`INZWA_LLM_ENGINE=fake`: scripted replies for supervision, chaos and lifecycle tests.

No model files, loads at once, deterministic: the reply is `INZWA_FAKE_LLM_REPLY`, or an echo
of the user's last message in a few sentences, streamed word by word at
`INZWA_FAKE_LLM_TOKENS_PER_S`. A replay's prefix is honoured like a real engine's: only the
text after it is streamed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from common.settings import Settings
from llm_worker.interface import Messages


def create(settings: Settings) -> FakeLlm:
    return FakeLlm(settings.fake_llm_reply, tokens_per_s=settings.fake_llm_tokens_per_s,
                   concurrency=settings.llm_concurrency)


def _words(text: str) -> list[str]:
    """Pieces as a tokenizer would give them: each word with its leading space."""
    return re.findall(r"\s*\S+", text)


class FakeLlm:
    def __init__(self, reply: str = "", *, tokens_per_s: float = 50.0, concurrency: int = 4) -> None:
        self.reply = reply
        self.tokens_per_s = tokens_per_s
        self.concurrency = concurrency

    def info(self) -> dict[str, str]:
        return {"name": "fake-llm", "version": "1", "sha256": "", "device": "cpu", "engine": "fake"}

    async def warm(self, system_prompt: str = "") -> None:
        async for _ in self.stream([{"role": "user", "content": "Hi"}], max_new_tokens=2):
            pass

    def answer(self, messages: Messages) -> str:
        if self.reply:
            return self.reply
        heard = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        heard = heard.strip().rstrip(".?!") or "nothing"
        return f"You said {heard}. That is what I heard. Thank you for asking."

    async def stream(self, messages: Messages, *, max_new_tokens: int,
                     prefix: str = "") -> AsyncIterator[str]:
        reply = self.answer(messages)
        rest = reply[len(prefix):] if prefix and reply.startswith(prefix) else reply
        for piece in _words(rest)[: max(0, max_new_tokens)]:
            await asyncio.sleep(1.0 / self.tokens_per_s)
            yield piece
