"""The LLM worker process: GenerateRequests in, TokenChunks out, up to `engine.concurrency`
generations at once (a local model: one; a remote server or vLLM: several).

Every request ends with a final TokenChunk, whatever happens: an engine that fails to start,
fails mid-reply or is cancelled still closes its request (after a WorkerError naming the
failure), so the orchestrator is never left waiting. A request whose fields are out of bounds
is refused with a WorkerError instead of being generated.
"""

from __future__ import annotations

import asyncio
import logging
import time

from common.frames import GenerateRequest, LlmWork, TokenChunk, WarmupDone, WarmupRequest, WorkerError
from common.logs import content
from common.settings import Settings
from common.worker import WorkerRuntime
from llm_worker.interface import LLM, Messages, aclose
from llm_worker.token_clock import TokenClock

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.05  # how soon a cancel (barge-in) from the control socket stops a generation
MAX_MESSAGES = 64  # a session's prompt holds the system prompt and history_turns exchanges
ROLES = {"system", "user", "assistant"}


class LlmWorker:
    def __init__(self, engine: LLM, settings: Settings, system_prompt: str = "") -> None:
        self.engine = engine
        self.settings = settings
        self.system_prompt = system_prompt  # warm-ups keep llama.cpp's prefix cache on it
        self.runtime: WorkerRuntime | None = None
        self._queue: asyncio.Queue[LlmWork] = asyncio.Queue()
        self._running = 0
        self._arrived: dict[int, float] = {}  # when each queued request came in (token latency)

    async def handle(self, request: LlmWork) -> None:
        if isinstance(request, GenerateRequest):
            self._arrived[id(request)] = time.perf_counter()
        await self._queue.put(request)
        self._update_busy()

    async def run(self) -> None:
        """`engine.concurrency` servers take requests from one queue, in arrival order."""
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, self.engine.concurrency)):
                group.create_task(self._serve())

    def _update_busy(self) -> None:
        if self.runtime is not None:
            self.runtime.busy = self._running + self._queue.qsize()

    async def _serve(self) -> None:
        while True:
            request = await self._queue.get()
            self._running += 1
            self._update_busy()
            try:
                if isinstance(request, WarmupRequest):
                    await self._warm_up(request)
                else:
                    await self.generate(request)
            except Exception:  # a failure to emit: logged, and this server goes on
                log.exception("request failed")
            finally:
                self._running -= 1
                self._update_busy()

    async def _warm_up(self, request: WarmupRequest) -> None:
        runtime = self.runtime
        assert runtime is not None
        started, error = time.perf_counter(), ""
        try:
            await self.engine.warm(self.system_prompt)
        except Exception as exc:  # reported to the caller; the worker goes on serving
            log.exception("warm-up failed")
            error = f"{type(exc).__name__}: {exc}"
        await runtime.emit(WarmupDone(session_id=request.session_id, request_id=request.request_id,
                                      kind="llm", instance_id=runtime.instance_id, error=error,
                                      elapsed_ms=(time.perf_counter() - started) * 1000))

    def refusal(self, request: GenerateRequest) -> str | None:
        """Why a request is not generated (None: it is fine)."""
        limit = 4 * self.settings.max_text_chars  # a system prompt plus a caller's addition
        if not request.messages:
            return "no messages"
        if len(request.messages) > MAX_MESSAGES:
            return f"more than {MAX_MESSAGES} messages"
        if any(m.role not in ROLES for m in request.messages):
            return "a message has an unknown role"
        if any(len(m.content) > limit for m in request.messages) or len(request.prefix) > limit:
            return f"a message is longer than {limit} characters"
        return None

    def max_new_tokens(self, request: GenerateRequest) -> int:
        cap = self.settings.llm_max_new_tokens
        return min(request.max_new_tokens, cap) if request.max_new_tokens > 0 else cap

    def _stopped(self, request: GenerateRequest) -> bool:
        assert self.runtime is not None
        return self.runtime.is_cancelled(request.session_id, request.turn_id, request.request_id)

    async def generate(self, request: GenerateRequest) -> None:
        arrived = self._arrived.pop(id(request), None)  # a queued request's wait counts too
        refusal = self.refusal(request)
        if refusal is not None:
            await self._error(request, "bad_request", refusal)
            await self._emit(request, seq=0, token="", final=True)
            return
        sent = [0]  # pieces sent so far (the relay task counts, this side reads)
        relay = asyncio.create_task(self._relay(request, sent, arrived))
        try:
            while not relay.done():
                if self._stopped(request):
                    relay.cancel()  # closes the engine's stream: an HTTP response, a thread
                await asyncio.wait({relay}, timeout=CANCEL_POLL_S)
        finally:
            relay.cancel()  # a no-op once done; if this task is cancelled, the relay goes too
        if not relay.cancelled() and relay.exception() is not None:
            exc = relay.exception()
            # a server's error text may quote the prompt: logged only where content may be
            log.error("generation failed: %s: %s", type(exc).__name__, content(str(exc)),
                      extra={"session_id": request.session_id, "request_id": request.request_id})
            await self._error(request, "llm_failed", f"generation failed: {type(exc).__name__}")
        await self._emit(request, seq=sent[0], token="", final=True)

    async def _relay(self, request: GenerateRequest, sent: list[int], arrived: float | None = None) -> None:
        if self._stopped(request):
            return
        messages: Messages = [{"role": m.role, "content": m.content} for m in request.messages]
        pieces = self.engine.stream(messages, max_new_tokens=self.max_new_tokens(request),
                                    prefix=request.prefix)
        clock = TokenClock(arrived)  # token-level latency, from the request's arrival
        try:
            async for piece in pieces:
                elapsed = clock.token()
                await self._emit(request, seq=sent[0], token=piece, final=False, elapsed_ms=elapsed)
                sent[0] += 1
        finally:
            clock.done()
            await aclose(pieces)

    async def _error(self, request: GenerateRequest, code: str, message: str) -> None:
        assert self.runtime is not None
        await self.runtime.emit(WorkerError(session_id=request.session_id, turn_id=request.turn_id,
                                            request_id=request.request_id, kind="llm", code=code,
                                            message=message))

    async def _emit(self, request: GenerateRequest, *, seq: int, token: str, final: bool,
                    elapsed_ms: float | None = None) -> None:
        assert self.runtime is not None
        await self.runtime.emit(TokenChunk(session_id=request.session_id, turn_id=request.turn_id,
                                           request_id=request.request_id, seq=seq, token=token,
                                           is_final=final, elapsed_ms=elapsed_ms))
