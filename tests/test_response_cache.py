"""The response cache (issue 13): a deterministic chat (LLM at temperature 0) is answered once
by the LLM and then from the cache, with the same tokens; a prompt with history is never served
to another principal. In-process on the real orchestrator (tests/harness.py), then end to end:
the second identical /v1/chat on real processes is a hit in /metrics.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from common.frames import ChatJob, ChatMessage, GatewayHeartbeat, GenerateRequest, TokenChunk, WorkerExited
from common.metrics import CACHE_HITS, CACHE_MISSES
from tests.harness import InProcess
from tests.loopback import LOOPBACK
from tests.stack import Stack

RESPONSE = 'cache="response"'  # the label of this cache's samples on /metrics

QUESTION = [ChatMessage("user", "What is the capital of Zimbabwe?")]
HISTORY = [ChatMessage("user", "My name is Tariro."), ChatMessage("assistant", "Hello Tariro."),
           ChatMessage("user", "What is my name?")]


def count(metric: Any) -> float:
    return float(metric.labels("response")._value.get())


async def ask(h: InProcess, messages: list[ChatMessage], principal: str, reply: list[str]) -> dict[str, Any]:
    """One ChatJob; the LLM (if asked) answers `reply`. What the LLM and the gateway saw."""
    job_id = uuid.uuid4().hex
    await h.ingress(ChatJob(session_id=job_id, messages=messages, language="en", gateway_id="gw0",
                            principal=principal))
    asked = [f for f in h.to_worker("llm") if isinstance(f, GenerateRequest)]
    if asked:
        for index, token in enumerate(reply):
            await h.result(TokenChunk(session_id=job_id, request_id=job_id, token=token,
                                      is_final=index == len(reply) - 1))
    tokens = [f for f in h.to_gateway() if isinstance(f, TokenChunk)]
    assert tokens and tokens[-1].is_final and not h.orchestrator.jobs.active
    return {"llm": bool(asked), "tokens": [t.token for t in tokens], "seq": [t.seq for t in tokens]}


def scenario(tmp_path: Path, temperature: float,
             asks: list[tuple[list[ChatMessage], str]]) -> tuple[list[dict[str, Any]], float, float]:
    async def main() -> list[dict[str, Any]]:
        h = InProcess(tmp_path, llm_temperature=temperature)
        await h.ready()
        await h.ingress(GatewayHeartbeat(gateway_id="gw0", incarnation="i1"))
        try:
            return [await ask(h, messages, who, ["Harare ", "it is."]) for messages, who in asks]
        finally:
            await h.orchestrator.store.close()

    hits, misses = count(CACHE_HITS), count(CACHE_MISSES)
    out = asyncio.run(main())
    return out, count(CACHE_HITS) - hits, count(CACHE_MISSES) - misses


def test_a_repeated_deterministic_chat_skips_the_llm_even_for_another_principal(tmp_path: Path) -> None:
    out, hits, misses = scenario(tmp_path, 0.0, [(QUESTION, "alice"), (QUESTION, "alice"),
                                                 (QUESTION, "bob"), (QUESTION, "")])
    assert [o["llm"] for o in out] == [True, False, False, False]
    assert all(o["tokens"] == ["Harare ", "it is."] and o["seq"] == [0, 1] for o in out), out
    assert (hits, misses) == (3, 1)


def test_a_prompt_with_history_is_cached_for_its_principal_only(tmp_path: Path) -> None:
    out, hits, misses = scenario(tmp_path, 0.0, [(HISTORY, "alice"), (HISTORY, "alice"),
                                                 (HISTORY, "bob"), (HISTORY, ""), (HISTORY, "")])
    assert [o["llm"] for o in out] == [True, False, True, True, True]  # no principal: not cached
    assert (hits, misses) == (1, 2)


def test_a_sampling_llm_is_never_cached(tmp_path: Path) -> None:
    out, hits, misses = scenario(tmp_path, 0.3, [(QUESTION, "alice"), (QUESTION, "alice")])
    assert [o["llm"] for o in out] == [True, True] and (hits, misses) == (0, 0)


def test_a_reply_finished_by_another_worker_after_a_crash_is_not_cached(tmp_path: Path) -> None:
    """Half of it came from one instance and the rest from another: not one model's answer."""
    async def main() -> list[bool]:
        h = InProcess(tmp_path, llm_temperature=0.0)
        await h.ready()
        await h.ingress(GatewayHeartbeat(gateway_id="gw0", incarnation="i1"))
        await h.ingress(ChatJob(session_id="j1", messages=QUESTION, language="en", gateway_id="gw0"))
        assert h.to_worker("llm")
        await h.result(TokenChunk(session_id="j1", request_id="j1", token="Harare ", is_final=False))
        await h.watchdog(WorkerExited(kind="llm", program="llm_worker", instance=0))
        await h.ready("llm")  # back: the job continues there after what was sent
        [replay] = [f for f in h.to_worker("llm") if isinstance(f, GenerateRequest)]
        assert replay.prefix == "Harare "
        await h.result(TokenChunk(session_id="j1", request_id="j1", token="it is.", is_final=True))
        h.to_gateway()
        try:
            return [(await ask(h, QUESTION, "", ["Harare ", "it is."]))["llm"]]
        finally:
            await h.orchestrator.store.close()

    assert asyncio.run(main()) == [True]  # asked the LLM again: nothing was cached


@pytest.mark.e2e
def test_a_second_identical_chat_is_served_from_the_cache(deterministic_stack: Stack) -> None:
    stack = deterministic_stack
    body = {"messages": [{"role": "user", "content": f"Cache check {uuid.uuid4().hex[:8]}."}]}
    hits, misses = (stack.metric(f"inzwa_cache_{n}_total", RESPONSE) for n in ("hits", "misses"))
    first = LOOPBACK.post(f"{stack.http}/v1/chat", json=body, timeout=60)
    second = LOOPBACK.post(f"{stack.http}/v1/chat", json=body, timeout=60)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert second.json()["message"] == first.json()["message"] and first.json()["message"]["content"]
    assert stack.metric("inzwa_cache_misses_total", RESPONSE) - misses == 1
    assert stack.metric("inzwa_cache_hits_total", RESPONSE) - hits == 1


@pytest.mark.e2e
def test_a_chat_with_history_is_cached_for_its_caller_only(deterministic_stack: Stack) -> None:
    """The gateway names the caller on the job: the same history hits for the same caller and
    misses for another (the admin token is another principal than an anonymous caller)."""
    stack = deterministic_stack
    tag = uuid.uuid4().hex[:8]
    body = {"messages": [{"role": "user", "content": f"My code is {tag}."},
                         {"role": "assistant", "content": "Noted."},
                         {"role": "user", "content": "What is my code?"}]}
    hits, misses = (stack.metric(f"inzwa_cache_{n}_total", RESPONSE) for n in ("hits", "misses"))
    for headers in ({}, {}, stack.admin_headers()):
        reply = LOOPBACK.post(f"{stack.http}/v1/chat", json=body, headers=headers, timeout=60)
        assert reply.status_code == 200, reply.text
    assert stack.metric("inzwa_cache_hits_total", RESPONSE) - hits == 1  # the anonymous caller's repeat
    assert stack.metric("inzwa_cache_misses_total", RESPONSE) - misses == 2  # its first, the admin's
