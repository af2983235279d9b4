"""The remote LLM engine (`INZWA_LLM_ENGINE=openai`) against a real llama-cpp-python server on
loopback: streaming, cancel, continuation, N requests at once, a server killed mid-reply."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.frames import TokenChunk, WorkerError
from common.models import resolve
from common.settings import Settings
from llm_worker.engines.openai import OpenAILlm
from tests.remote_servers import LlamaServer
from tests.test_engine_failures import request, run, start_llm, stop

pytestmark = pytest.mark.models

QUESTION = [
    {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital city of France?"},
]
STORY = [{"role": "user", "content": "Tell me a long story about a lion."}]


@pytest.fixture(scope="module")
def server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    running = LlamaServer(resolve(settings.llm_model, settings.models_dir),
                          tmp_path_factory.mktemp("llama") / "server.log")
    running.start()
    try:
        yield running
    finally:
        running.stop()


def engine(server: LlamaServer, **options: object) -> OpenAILlm:
    return OpenAILlm(server.url, temperature=0.0, seed=0, timeout_s=30.0, **options)  # type: ignore[arg-type]


async def collect(llm: OpenAILlm, messages: list[dict[str, str]], **options: object) -> list[str]:
    return [piece async for piece in llm.stream(messages, max_new_tokens=40, **options)]  # type: ignore[arg-type]


def test_streams_a_reply_in_pieces(server: LlamaServer) -> None:
    async def main() -> None:
        llm = engine(server)
        pieces = await collect(llm, QUESTION)
        await llm.aclose()
        assert len(pieces) > 1  # streamed, not one block
        assert "paris" in "".join(pieces).lower()

    run(main())


def test_cancel_closes_the_stream_and_the_server_stops(server: LlamaServer) -> None:
    async def main() -> None:
        llm = engine(server)
        before = server.log().count("Disconnected from client")
        stream = llm.stream(STORY, max_new_tokens=400)
        seen = []
        async for piece in stream:
            seen.append(piece)
            if len(seen) == 5:
                break
        await stream.aclose()  # type: ignore[attr-defined]  # what a cancel does to the stream
        assert len(seen) == 5
        for _ in range(100):  # the server notices the closed connection at its next token
            if server.log().count("Disconnected from client") > before:
                break
            await asyncio.sleep(0.1)
        assert server.log().count("Disconnected from client") == before + 1
        assert "paris" in "".join(await collect(llm, QUESTION)).lower()  # free for the next one
        await llm.aclose()

    run(main())


def test_a_replay_continues_after_the_text_already_sent(server: LlamaServer) -> None:
    async def main() -> None:
        llm = engine(server)
        full = "".join(await collect(llm, QUESTION))
        words = full.split()
        prefix = " ".join(words[: max(1, len(words) // 2)])
        rest = "".join(await collect(llm, QUESTION, prefix=prefix))
        await llm.aclose()
        assert rest.strip()
        assert not rest.lstrip().startswith(prefix)  # the text already sent is not said again
        assert (prefix + rest).replace(" ", "").lower() == full.replace(" ", "").lower()

    run(main())


def test_the_worker_serves_n_requests_at_once(server: LlamaServer) -> None:
    async def main() -> None:
        llm = engine(server, concurrency=3)
        alone = "".join(await collect(llm, [{"role": "user", "content": "what is the capital of zimbabwe"}]))
        worker, runtime, serving = await start_llm(llm, Settings(_env_file=None, llm_max_new_tokens=40))
        running: list[int] = []
        for index in range(3):
            await worker.handle(request(f"r{index}", turn=index + 1, max_new_tokens=40))
        probe = asyncio.create_task(_sample(lambda: worker._running, running))
        await runtime.wait_for(lambda: all(runtime.final_of(f"r{i}")() for i in range(3)), 120)
        probe.cancel()
        await stop(serving)
        await llm.aclose()
        assert max(running) == 3  # three requests in flight at the worker at once
        replies = ["".join(t.token for t in runtime.of(TokenChunk, f"r{i}")) for i in range(3)]
        assert runtime.of(WorkerError) == []
        assert "harare" in alone.lower()
        assert replies == [alone] * 3  # each whole and unmixed, as when asked alone

    run(main())


async def _sample(read: object, into: list[int]) -> None:
    while True:
        into.append(read())  # type: ignore[operator]
        await asyncio.sleep(0.01)


def test_a_server_killed_mid_reply_is_an_error_then_it_recovers(
    settings: Settings, tmp_path: Path
) -> None:
    own = LlamaServer(resolve(settings.llm_model, settings.models_dir), tmp_path / "own.log")
    own.start()
    try:
        async def main() -> None:
            llm = engine(own, retries=1)
            worker, runtime, serving = await start_llm(llm, Settings(_env_file=None, llm_max_new_tokens=300))
            await worker.handle(request("r1", max_new_tokens=300))
            await runtime.wait_for(lambda: len(runtime.of(TokenChunk, "r1")) >= 3, 60)
            await asyncio.to_thread(own.kill)
            await runtime.wait_for(runtime.final_of("r1"), 60)  # closed, not hanging
            assert [e.code for e in runtime.of(WorkerError, "r1")] == ["llm_failed"]
            await asyncio.to_thread(own.start)  # the server is back, on the same port
            await worker.handle(request("r2", turn=2, max_new_tokens=40))
            await runtime.wait_for(runtime.final_of("r2"), 60)
            assert runtime.of(WorkerError, "r2") == []
            assert "".join(t.token for t in runtime.of(TokenChunk, "r2")).strip()
            await stop(serving)
            await llm.aclose()

        run(main())
    finally:
        own.stop()
