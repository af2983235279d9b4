"""The batched llama.cpp engine (`llama-cpp-batched`) with the real SmolLM2 GGUF, at temperature 0.

What batching must not change: a request's text alone in the batched engine is the single
engine's text; requests decoded together give the text each gives alone; a closed stream frees its
slot while the others finish; a replay's prefix is continued; a next turn reuses its prefix.

Equality is bit for bit from the same cache state. What can change a reply's last bits is the
cache's history, not the batch: a prefix reused from a slot was computed in other prefill chunks
than a fresh prompt, and at a near-tie greedy decoding may then take another word (seen on 2 of
8 questions when slots held earlier replies). So each comparison starts from a known state: a
fresh engine, or every slot warmed with the system prompt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from llm_worker.engines.llama_cpp_batched import BatchedLlamaCppEngine
from llm_worker.interface import Messages

pytestmark = pytest.mark.models

BOUND_S = 60.0  # a hang fails the test instead of stalling the suite
SYSTEM = "You are a helpful voice assistant. Answer in one or two short sentences."
# four different questions of the same prompt length in tokens (checked in the test)
SAME_LENGTH = ["What is the capital of Zimbabwe?", "What is the capital of Kenya?",
               "What is the capital of France?", "How do I boil an egg?"]
TOKENS = 24  # short replies keep the module's wall time small


def ask(question: str) -> Messages:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def run(main: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(main, BOUND_S))


async def reply(engine: Any, messages: Messages, tokens: int = TOKENS, prefix: str = "") -> str:
    return "".join([piece async for piece in engine.stream(messages, max_new_tokens=tokens,
                                                            prefix=prefix)])


@pytest.fixture(scope="module")
def batched(settings):
    from common.models import resolve

    engine = BatchedLlamaCppEngine.load(resolve(settings.llm_model, settings.models_dir), slots=4,
                                        slot_context=1024, threads=settings.llm_threads,
                                        temperature=0.0)
    yield engine
    engine.close()


def test_alone_the_batched_engine_writes_the_single_engines_text(batched, llm_engine) -> None:
    run(batched.warm(SYSTEM))  # every slot: the system prompt, nothing of these questions
    for question in SAME_LENGTH:
        single = "".join(llm_engine.generate_stream(ask(question), max_new_tokens=TOKENS))
        alone = run(reply(batched, ask(question)))
        assert alone == single, question
        assert alone.strip()


def test_questions_decoded_together_give_the_text_each_gives_alone(batched) -> None:
    assert len({len(batched.prompt_tokens(ask(q))) for q in SAME_LENGTH}) == 1

    async def main() -> tuple[list[str], list[str]]:
        await batched.warm(SYSTEM)  # every slot: the system prompt, nothing of these questions
        alone = [await reply(batched, ask(q)) for q in SAME_LENGTH]
        await batched.warm(SYSTEM)
        together = await asyncio.gather(*(reply(batched, ask(q)) for q in SAME_LENGTH))
        return alone, list(together)

    alone, together = run(main())
    assert together == alone
    assert len(set(together)) == len(SAME_LENGTH)  # four different answers, each to its question


def test_prompts_of_any_lengths_together_give_the_text_each_gives_alone(settings) -> None:
    """From a fresh engine: the question alone, then beside a longer and a shorter prompt."""
    from common.models import resolve

    path = resolve(settings.llm_model, settings.models_dir)
    moon = ask("Tell me a fact about the moon.")  # a near-tie a few words in: a sensitive probe
    others = [ask("Please summarise: " + "The quick brown fox jumps over the lazy dog. " * 12),
              [{"role": "user", "content": "Hi"}]]

    async def fresh(prompts: list[Messages]) -> list[str]:
        engine = BatchedLlamaCppEngine.load(path, slots=3, slot_context=512,
                                            threads=settings.llm_threads, temperature=0.0)
        try:
            return list(await asyncio.gather(*(reply(engine, p, tokens=32) for p in prompts)))
        finally:
            engine.close()

    alone = run(fresh([moon]))[0]
    together = run(fresh([moon, *others]))
    assert together[0] == alone
    assert together[1] != alone and together[1].strip()  # its own answer, not a neighbour's


def test_closing_one_stream_leaves_the_others_to_finish(batched) -> None:
    async def cut_short() -> list[str]:
        stream = batched.stream(ask("Tell me a long story about a lion."), max_new_tokens=200)
        pieces = [await anext(stream) for _ in range(3)]
        await stream.aclose()  # a barge-in: the slot is freed at the next step
        return pieces

    async def main() -> tuple[list[str], list[str], str]:
        cut = asyncio.create_task(cut_short())
        others = await asyncio.gather(*(reply(batched, ask(q), tokens=40) for q in SAME_LENGTH[:3]))
        after = await asyncio.gather(*(reply(batched, ask(q), tokens=4) for q in SAME_LENGTH))
        return await cut, list(others), after[0]

    cut, others, after = run(main())
    assert len(cut) == 3
    assert all(text.strip() for text in others)
    assert "Zimbabwe" in others[0] and "Nairobi" in others[1]
    assert after.strip()  # all four slots serve again: the closed stream's slot was freed


def test_a_replay_continues_after_its_prefix_like_the_single_engine(batched, llm_engine) -> None:
    question = ask("How do I boil an egg?")
    run(batched.warm(SYSTEM))
    full = run(reply(batched, question, tokens=30))
    prefix = " ".join(full.split()[:4])
    rest = run(reply(batched, question, tokens=30, prefix=prefix))
    single = "".join(llm_engine.generate_stream(question, max_new_tokens=30, prefix=prefix))
    assert rest.strip()
    assert not rest.startswith(prefix)  # only the new text
    assert rest == single


def test_a_next_turn_prefills_only_what_its_prompt_adds(batched) -> None:
    first = ask("What is the capital of Kenya?")
    answer = run(reply(batched, first))
    second = [*first, {"role": "assistant", "content": answer},
              {"role": "user", "content": "And how many people live there?"}]
    before = batched.prefilled_tokens
    assert run(reply(batched, second)).strip()
    prefilled = batched.prefilled_tokens - before
    added = len(batched.prompt_tokens(second)) - len(batched.prompt_tokens(first))
    assert 0 < prefilled <= added


def test_a_prompt_longer_than_a_slot_is_an_error_not_a_hang(batched) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        run(reply(batched, ask("lion " * 2000)))
    assert run(reply(batched, ask("What is the capital of Kenya?"), tokens=4)).strip()


def test_the_llm_worker_serves_sessions_together_and_stops_a_cancelled_one(batched) -> None:
    """Through the real LlmWorker (engine.concurrency servers): a barge-in on one session stops
    its reply, the others finish, every request gets its final frame and no error."""
    from common.frames import ChatMessage, GenerateRequest, TokenChunk, WorkerError
    from tests.test_engine_failures import start_llm, stop

    story = [ChatMessage("system", SYSTEM), ChatMessage("user", "Tell me a long story about a lion.")]
    requests = [GenerateRequest(session_id="s0", turn_id=1, request_id="r0", messages=story)] + [
        GenerateRequest(session_id=f"s{i}", turn_id=1, request_id=f"r{i}", max_new_tokens=TOKENS,
                        messages=[ChatMessage("system", SYSTEM), ChatMessage("user", q)])
        for i, q in enumerate(SAME_LENGTH[:3], start=1)]

    async def main() -> Any:
        worker, runtime, task = await start_llm(batched)
        try:
            for item in requests:
                await worker.handle(item)
            await runtime.wait_for(lambda: len(runtime.of(TokenChunk, "r0")) >= 3)
            runtime.cancelled.add(("s0", 1))  # the barge-in, as the control socket reports it
            await runtime.wait_for(lambda: all(runtime.final_of(r.request_id)() for r in requests))
        finally:
            await stop(task)
        return runtime

    runtime = run(main())
    assert not runtime.of(WorkerError)
    texts = {r.request_id: "".join(c.token for c in runtime.of(TokenChunk, r.request_id))
             for r in requests}
    assert len(runtime.of(TokenChunk, "r0")) < 40  # stopped long before the 80-token cap
    assert "Zimbabwe" in texts["r1"] and "Nairobi" in texts["r2"] and texts["r3"].strip()


def test_a_failed_decode_reaches_its_consumer_and_the_engine_goes_on(batched) -> None:
    """llama.cpp refusing a batch (its return code, as when the KV cache is full) is an error
    in the request's stream, not a hang; the slot starts over and the next request is served."""
    import llama_cpp

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llama_cpp, "llama_decode", lambda ctx, batch: 1)
        with pytest.raises(RuntimeError, match="llama_decode returned 1"):
            run(reply(batched, ask("What is the capital of Kenya?")))
    assert "Nairobi" in run(reply(batched, ask("What is the capital of Kenya?")))
