"""`INZWA_LLM_ENGINE=openai`: any OpenAI-compatible `POST /v1/chat/completions` server (vLLM
`serve`, llama.cpp's server, llama-cpp-python's server, hosted APIs), streamed over SSE.

- One `httpx.AsyncClient` per worker (made on the worker's event loop at first use), its pool
  sized to `INZWA_LLM_CONCURRENCY`, the number of requests the worker runs at once.
- Cancel (barge-in): the worker cancels the request's task; leaving `client.stream()` closes the
  response mid-body, which drops the connection, and the server stops generating.
- Timeouts: `INZWA_LLM_REMOTE_TIMEOUT_S` for connecting and between two chunks, so a server that
  stalls mid-reply ends in an error, not a hang.
- Retries (`INZWA_LLM_REMOTE_RETRIES`): a connection error, a timeout or a 429/5xx is retried
  with backoff. A retry after some text went out continues after that text (as a replay does).
- Continuation (`prefix`, a replay): the text already sent goes as a final, partial assistant
  message, with vLLM's `continue_final_message: true, add_generation_prompt: false` so the
  model goes on inside that message. vLLM and llama.cpp's C++ server continue it;
  llama-cpp-python's server ignores the flags and closes the message, so there the model starts
  over in a new message: a reply that begins by restating the text already sent has that
  restatement dropped (`Restated`), so the client never hears it twice (see README "Engines").
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from common.settings import Settings
from llm_worker.interface import Messages

RETRY_STATUS = {429, 500, 502, 503, 504}
BACKOFF_S = 0.25  # doubled for each retry


class RemoteError(RuntimeError):
    """The server refused or broke the request; `retryable` when trying again may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def create(settings: Settings) -> OpenAILlm:
    if not settings.llm_remote_url:
        raise ValueError("INZWA_LLM_ENGINE=openai needs INZWA_LLM_REMOTE_URL (e.g. http://host:8000/v1)")
    return OpenAILlm(settings.llm_remote_url, model=settings.llm_remote_model,
                     api_key=settings.llm_remote_api_key, timeout_s=settings.llm_remote_timeout_s,
                     retries=settings.llm_remote_retries, concurrency=settings.llm_concurrency,
                     temperature=settings.llm_temperature, seed=settings.llm_seed)


def _piece(data: str) -> str:
    """The text of one SSE `data:` payload of a chat completion chunk."""
    chunk = json.loads(data)
    if "error" in chunk:
        raise RemoteError(f"server error in stream: {str(chunk['error'])[:200]}", retryable=False)
    choices = chunk.get("choices") or [{}]
    return str((choices[0].get("delta") or {}).get("content") or "")


class Restated:
    """Drops a restatement of the text already sent from the start of a continued reply.

    A server that continues the partial message (vLLM, llama.cpp) yields new text at once, which
    passes straight through; one that starts over repeats the sent text first, which is held
    until it is clearly a repeat (dropped) or clearly not (passed on whole)."""

    def __init__(self, sent: str) -> None:
        self.sent = sent.strip()
        self.held = ""
        self.deciding = bool(self.sent)

    def feed(self, piece: str) -> str:
        if not self.deciding:
            return piece
        self.held += piece
        said = self.held.lstrip()
        if len(said) < len(self.sent) and self.sent.startswith(said):
            return ""  # still inside a possible repeat
        self.deciding = False
        return said[len(self.sent):] if said.startswith(self.sent) else self.held


class OpenAILlm:
    def __init__(self, base_url: str, *, model: str = "", api_key: str = "", timeout_s: float = 30.0,
                 retries: int = 2, concurrency: int = 4, temperature: float = 0.3,
                 seed: int | None = None) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.model = model
        self.concurrency = concurrency
        self.retries = retries
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
        self._sampling: dict[str, Any] = {"temperature": temperature}
        if seed is not None:
            self._sampling["seed"] = seed
        self._client: httpx.AsyncClient | None = None

    def info(self) -> dict[str, str]:
        return {"name": self.model or "remote", "version": "remote", "sha256": "",
                "device": f"remote:{urlsplit(self.base_url).netloc}", "engine": "openai"}

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:  # an AsyncClient belongs to the loop it first runs on
            limits = httpx.Limits(max_connections=self.concurrency,
                                  max_keepalive_connections=self.concurrency)
            self._client = httpx.AsyncClient(base_url=self.base_url, headers=self._headers,
                                             timeout=self._timeout, limits=limits)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def warm(self, system_prompt: str = "") -> None:
        """One tiny generation: READY only when the server answers."""
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        async for _ in self.stream([*messages, {"role": "user", "content": "Hi"}], max_new_tokens=2):
            pass

    def _body(self, messages: Messages, max_new_tokens: int, prefix: str) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": messages, "max_tokens": max_new_tokens, "stream": True,
                                **self._sampling}
        if self.model:
            body["model"] = self.model
        if prefix:
            body["messages"] = [*messages, {"role": "assistant", "content": prefix}]
            body.update(continue_final_message=True, add_generation_prompt=False)
        return body

    async def _once(self, body: dict[str, Any]) -> AsyncIterator[str]:
        async with self._http().stream("POST", "chat/completions", json=body) as response:
            if response.status_code >= 400:
                detail = (await response.aread()).decode(errors="replace")[:200]
                raise RemoteError(f"HTTP {response.status_code}: {detail}",
                                  retryable=response.status_code in RETRY_STATUS)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # SSE comments, event names, keep-alives
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                piece = _piece(data)
                if piece:
                    yield piece

    async def stream(self, messages: Messages, *, max_new_tokens: int,
                     prefix: str = "") -> AsyncIterator[str]:
        said = ""
        for attempt in range(self.retries + 1):
            budget = max_new_tokens - len(said.split())  # roughly: words already sent
            restated = Restated(prefix + said)
            try:
                async for piece in self._once(self._body(messages, max(1, budget), prefix + said)):
                    new = restated.feed(piece)
                    if new:
                        said += new
                        yield new
                return
            except (httpx.TransportError, RemoteError) as exc:
                retryable = not isinstance(exc, RemoteError) or exc.retryable
                if not retryable or attempt == self.retries:
                    raise
            await asyncio.sleep(BACKOFF_S * 2**attempt)
