"""The LLM worker process: GenerateRequest in, TokenChunks out, one generation at a time."""

from __future__ import annotations

import contextlib
import logging

from common.frames import GenerateRequest, TokenChunk
from common.worker import SerialWorker, iterate_in_thread
from llm_worker.engine import LLM

log = logging.getLogger(__name__)


class LlmWorker(SerialWorker[GenerateRequest]):
    def __init__(self, engine: LLM, default_max_new_tokens: int, system_prompt: str = "") -> None:
        super().__init__()
        self.engine = engine
        self.default_max_new_tokens = default_max_new_tokens
        self.system_prompt = system_prompt  # warm-ups keep llama.cpp's prefix cache on it

    def warm(self) -> None:
        self.engine.warmup(self.system_prompt)

    async def failed(self, request: GenerateRequest) -> None:
        await self._emit(request, seq=1_000_000, token="", final=True)

    async def process(self, request: GenerateRequest) -> None:
        runtime = self.runtime
        assert runtime is not None
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        max_new = request.max_new_tokens or self.default_max_new_tokens

        def stopped() -> bool:
            return runtime.is_cancelled(request.session_id, request.turn_id, request.request_id)

        seq = 0
        if not stopped():
            pieces = iterate_in_thread(
                lambda: self.engine.generate_stream(
                    messages, max_new_tokens=max_new, should_stop=stopped, prefix=request.prefix
                )
            )
            async with contextlib.aclosing(pieces):
                async for piece in pieces:
                    await self._emit(request, seq=seq, token=piece, final=False)
                    seq += 1
        await self._emit(request, seq=seq, token="", final=True)

    async def _emit(self, request: GenerateRequest, *, seq: int, token: str, final: bool) -> None:
        assert self.runtime is not None
        await self.runtime.emit(
            TokenChunk(
                session_id=request.session_id,
                turn_id=request.turn_id,
                request_id=request.request_id,
                seq=seq,
                token=token,
                is_final=final,
            )
        )
