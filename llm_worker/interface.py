"""What the LLM worker needs from a language model engine.

One async seam for every engine: `stream()` yields the reply's new text and stops when the
consumer closes it (a barge-in cancels the request's task, which closes the stream: a remote
engine closes its HTTP response, a local one stops its thread at the next token). Engines that
block (llama.cpp) get this from `llm_worker.blocking.BlockingLLM`. Imports nothing of the worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

Messages = list[dict[str, str]]  # [{"role": ..., "content": ...}], system prompt first


class LLM(Protocol):
    # Requests the engine serves at once: the worker runs up to this many generations
    # concurrently (a local model: 1; a remote server or vLLM batches several).
    concurrency: int

    def info(self) -> dict[str, str]:
        """name, version, sha256 (of the loaded weights; empty when remote), device, engine."""
        ...

    async def warm(self, system_prompt: str = "") -> None:
        """One tiny generation (or a reachability check) before READY and on an admin warm-up."""
        ...

    def stream(self, messages: Messages, *, max_new_tokens: int, prefix: str = "") -> AsyncIterator[str]:
        """Yield the reply's text pieces as they are generated.

        With `prefix`, the reply already begins with that text (sent before a worker died):
        generation continues after it and yields only the new text. Errors are raised to the
        consumer, never swallowed into a stream that just stops or hangs.
        """
        ...


async def aclose(stream: AsyncIterator[Any]) -> None:
    """Close an engine's stream now (an async generator's `aclose`), not whenever it is
    garbage-collected: that is what stops its HTTP response or its thread."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
