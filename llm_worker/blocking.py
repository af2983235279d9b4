"""The async LLM seam for engines whose generation blocks (llama-cpp-python).

The engine's `generate_stream` runs in a thread through `iterate_in_thread`: its bounded queue
gives backpressure, and closing the async stream stops the thread at its next token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

from common.worker import iterate_in_thread
from llm_worker.interface import Messages, aclose


class BlockingLLM:
    concurrency = 1  # one model context, one generation at a time

    def generate_stream(
        self, messages: Messages, *, max_new_tokens: int,
        should_stop: Callable[[], bool] = lambda: False, prefix: str = "",
    ) -> Iterator[str]:
        raise NotImplementedError

    def warmup(self, system_prompt: str = "") -> None:
        raise NotImplementedError

    async def warm(self, system_prompt: str = "") -> None:
        await asyncio.to_thread(self.warmup, system_prompt)

    async def stream(self, messages: Messages, *, max_new_tokens: int,
                     prefix: str = "") -> AsyncIterator[str]:
        pieces = iterate_in_thread(
            lambda: self.generate_stream(messages, max_new_tokens=max_new_tokens, prefix=prefix)
        )
        try:
            async for piece in pieces:
                yield piece
        finally:
            await aclose(pieces)  # stops the engine's thread at its next token
