"""Human handoff in the real orchestrator, in-process (tests/harness.py): triggers, the operator
protocol, the timeout, the store, and a restart (handoff area, issue 14)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from common.frames import (
    AudioChunk,
    ErrorEvent,
    GenerateRequest,
    HandoffAsk,
    HandoffEvent,
    HistoryReply,
    HistoryRequest,
    OperatorEvent,
    OperatorRequest,
    PlaybackMark,
    SessionStart,
    SynthesizeRequest,
    TokenChunk,
    TranscriptChunk,
)
from common.languages import handoff as handoff_data
from common.languages import registry as languages
from tests.harness import SID, InProcess

OP = "op-1"


def run(h: InProcess, scenario: Callable[[InProcess], Awaitable[None]], language: str = "en") -> None:
    async def main() -> None:
        await h.ready()
        await h.start()
        if language != "en":
            await h.ingress(SessionStart(session_id=SID, gateway_id="gw0", principal="p1", language=language))
        h.to_worker("asr")
        await scenario(h)
        await h.orchestrator.store.close()

    asyncio.run(main())


async def final(h: InProcess, text: str) -> None:
    await h.result(TranscriptChunk(session_id=SID, text=text, is_final=True, confidence=0.9,
                                   instance_id="asr-0"))


async def operator(h: InProcess, action: str, text: str = "", session_id: str = SID) -> None:
    await h.ingress(OperatorRequest(session_id=session_id if action not in ("hello", "bye") else "",
                                    operator_id=OP, principal="opA", action=action,  # type: ignore[arg-type]
                                    text=text, gateway_id="gw0"))


async def spoken(h: InProcess) -> list[str]:
    """What was sent to TTS since the last look (its phrases joined, one entry per turn), each
    phrase answered and the turn played to the end."""
    texts: dict[int, list[str]] = {}
    for _ in range(20):
        requests = h.to_worker("tts")
        if not requests:
            break
        for request in requests:
            assert isinstance(request, SynthesizeRequest)
            texts.setdefault(request.turn_id, []).append(request.text)
            await h.result(AudioChunk(session_id=SID, turn_id=request.turn_id, request_id=request.request_id,
                                      payload=b"\0\0" * 160, is_final=True, text=request.text))
    for turn_id in texts:
        await h.ingress(PlaybackMark(session_id=SID, turn_id=turn_id, done=True))
    return [" ".join(phrases) for phrases in texts.values()]


def events(frames: list[Any], kind: type) -> list[Any]:
    return [f for f in frames if isinstance(f, kind)]


async def _the_whole_handoff(h: InProcess) -> None:
    await operator(h, "hello")
    assert events(h.to_gateway(), OperatorEvent)[0].event == "handoff.queue"
    await final(h, "I want to talk to a person")
    out = h.to_gateway()
    assert [e.event for e in events(out, HandoffEvent)] == ["handoff.started"]
    requested = [e for e in events(out, OperatorEvent) if e.event == "handoff.requested"]
    assert requested and requested[0].session_id == OP and requested[0].target == SID
    info = requested[0].handoffs[0]
    assert info.reason == "explicit" and info.triggers[0].evidence == "talk to a person"
    assert info.confidences == [0.9] and info.language == "en"
    assert not h.to_worker("llm")  # no reply generated
    assert await spoken(h) == [languages.get("en").fallback("handover")]
    await operator(h, "accept")
    out = h.to_gateway()
    accepted = next(e for e in events(out, OperatorEvent) if e.event == "handoff.accepted")
    assert [m.content for m in accepted.handoffs[0].history][-1] == languages.get("en").fallback("handover")
    assert [e.event for e in events(out, HandoffEvent)] == ["handoff.accepted"]
    await h.result(TranscriptChunk(session_id=SID, text="my card", confidence=0.5, instance_id="asr-0"))
    live = [(e.event, e.text) for e in events(h.to_gateway(), OperatorEvent)]
    assert live == [("transcript.partial", "my card")]
    await final(h, "my card was stolen")
    transcript = [e for e in events(h.to_gateway(), OperatorEvent) if e.event == "transcript"]
    assert [(t.text, t.target) for t in transcript] == [("my card was stolen", SID)]
    assert not h.to_worker("llm")
    await operator(h, "say", "I have blocked your card")
    assert await spoken(h) == ["I have blocked your card"]
    await operator(h, "release")
    out = h.to_gateway()
    assert [(e.event, e.reason) for e in events(out, HandoffEvent)] == [("handoff.ended", "released")]
    await final(h, "thank you")
    request = h.to_worker("llm")[0]
    assert isinstance(request, GenerateRequest)
    said = [(m.role, m.content) for m in request.messages]
    assert ("user", "my card was stolen") in said and ("assistant", "I have blocked your card") in said
    await _stored(h)


async def _stored(h: InProcess) -> None:
    await h.ingress(HistoryRequest(session_id=SID, gateway_id="gw0", principal="p1", request_id="r1"))
    reply = next(f for f in h.to_gateway() if isinstance(f, HistoryReply))
    [stored] = reply.handoffs
    assert (stored.state, stored.outcome, stored.operator) == ("ended", "released", "opA")
    operator_turn = stored.turns[0]
    said = {(m.turn_id, m.role): m.content for m in reply.stored}
    assert said[(operator_turn, "assistant")] == "I have blocked your card"
    assert said[(operator_turn, "user")] == "my card was stolen"


def test_a_caller_gets_a_person_and_back_with_the_operator_turns_in_history(tmp_path: Path) -> None:
    run(InProcess(tmp_path), _the_whole_handoff)


def test_no_operator_in_time_the_caller_is_told_in_shona_and_the_assistant_goes_on(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> None:
        await final(h, "ndoda kutaura nemunhu")
        assert [e.event for e in events(h.to_gateway(), HandoffEvent)] == ["handoff.started"]
        assert await spoken(h) == [languages.get("sn").fallback("handover")]
        await asyncio.sleep(0.1)
        await h.orchestrator.tick()
        assert [(e.event, e.reason) for e in events(h.to_gateway(), HandoffEvent)] == [
            ("handoff.ended", "timeout")]
        assert await spoken(h) == [handoff_data.get("sn").phrases["timeout"]]
        await final(h, "guta guru reZimbabwe nderipi")
        assert isinstance(h.to_worker("llm")[0], GenerateRequest)  # the assistant answers again

    run(InProcess(tmp_path, handoff_timeout_s=0.05), scenario, language="sn")


def test_timeout_may_end_the_session_after_the_farewell(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> None:
        await final(h, "let me speak to a human")
        await spoken(h)  # (within the timeout however busy the machine: 0.05 s was not always)
        await asyncio.sleep(1.1)
        await h.orchestrator.tick()
        assert await spoken(h) == [handoff_data.get("en").phrases["timeout_end"]]
        for _ in range(50):
            if SID not in h.orchestrator.sessions:
                break
            await asyncio.sleep(0.05)
        assert SID not in h.orchestrator.sessions
        assert [e.code for e in events(h.to_gateway(), ErrorEvent) if e.fatal] == ["handoff_timeout"]

    run(InProcess(tmp_path, handoff_timeout_s=1.0, handoff_timeout_action="end", heartbeat_interval_s=10),
        scenario)


def test_handoff_requests_are_checked_and_survive_a_restart(tmp_path: Path) -> None:
    async def before(h: InProcess) -> None:
        await h.ingress(HandoffAsk(session_id=SID, principal="someone-else", gateway_id="gw0",
                                   request_id="x"))
        assert [e.code for e in events(h.to_gateway(), ErrorEvent)] == ["session_not_found"]
        await h.ingress(HandoffAsk(session_id=SID, principal="p1", reason="billing", gateway_id="gw0",
                                   request_id="y"))
        out = h.to_gateway()
        assert [(e.event, e.request_id) for e in events(out, HandoffEvent)] == [
            ("handoff.started", ""), ("handoff.started", "y")]

    async def after(h: InProcess) -> None:  # a new orchestrator on the same store
        assert h.orchestrator.handoffs.holds(SID)
        assert [e.event for e in events(h.to_gateway(), HandoffEvent)] == ["handoff.started"]
        await operator(h, "hello")
        [queue] = [e for e in events(h.to_gateway(), OperatorEvent) if e.event == "handoff.queue"]
        assert [(i.session_id, i.reason, i.triggers[0].evidence) for i in queue.handoffs] == [
            (SID, "api", "billing")]
        await final(h, "hello?")
        assert not h.to_worker("llm")  # still handed over: no assistant reply

    run(InProcess(tmp_path), before)
    restarted = InProcess(tmp_path)
    asyncio.run(restarted.orchestrator.handoffs.restore())
    run(restarted, after)


def test_a_restored_handoff_whose_caller_never_comes_back_is_closed(tmp_path: Path) -> None:
    async def before(h: InProcess) -> None:
        await final(h, "I want to talk to a person")
        assert h.orchestrator.handoffs.holds(SID)

    async def later() -> None:
        restarted = InProcess(tmp_path, handoff_timeout_s=0.01)
        handoffs = restarted.orchestrator.handoffs
        await handoffs.restore()
        assert handoffs.holds(SID)
        await asyncio.sleep(0.2)  # ten timeouts, and the caller has not reconnected
        await restarted.orchestrator.tick()
        assert not handoffs.holds(SID)
        [record] = await handoffs.db.of_session(SID)
        assert (record.state, record.outcome) == ("ended", "caller_left")
        await restarted.orchestrator.store.close()

    run(InProcess(tmp_path), before)
    asyncio.run(later())


def test_the_llm_tier_is_asked_only_when_unsure_and_its_yes_hands_over(tmp_path: Path) -> None:
    async def judged(h: InProcess, text: str, answer: str) -> list[Any]:
        await final(h, text)
        requests = h.to_worker("llm")
        judge = [r for r in requests if ":judge:" in r.request_id]
        assert len(judge) == 1 and len(requests) == 2, requests  # the reply goes on beside it
        assert judge[0].messages[-1].content == text and judge[0].max_new_tokens <= 3
        await h.result(TokenChunk(session_id=SID, request_id=judge[0].request_id, token=answer,
                                  is_final=True))
        return h.to_gateway()

    async def scenario(h: InProcess) -> None:
        out = await judged(h, "not quite", " No")  # P(frustrated) about 0.46: unsure
        assert not events(out, HandoffEvent) and not events(out, TokenChunk)  # nothing reaches the client
        out = await judged(h, "I expected something else", "Yes.")  # about 0.77
        assert [(e.event, e.reason) for e in events(out, HandoffEvent)] == [("handoff.started", "llm")]
        assert await spoken(h) == [languages.get("en").fallback("handover")]

    run(InProcess(tmp_path, handoff_llm_judge=True, handoff_llm_band=0.3), scenario)


def test_the_llm_tier_is_off_by_default(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> None:
        await final(h, "I expected something else")
        assert [":judge:" in r.request_id for r in h.to_worker("llm")] == [False]

    run(InProcess(tmp_path, handoff_llm_band=0.3), scenario)


def test_an_accepted_handoff_comes_back_to_its_operator_after_a_restart(tmp_path: Path) -> None:
    async def before(h: InProcess) -> None:
        await operator(h, "hello")
        await final(h, "I want to talk to a person")
        await operator(h, "accept")
        told = [e.event for e in events(h.to_gateway(), HandoffEvent)]
        assert told == ["handoff.started", "handoff.accepted"]

    async def after() -> None:
        h = InProcess(tmp_path)
        await h.orchestrator.handoffs.restore()
        await h.ready()
        await operator(h, "hello")  # the gateway's operator socket says hello again by itself
        mine = [e for e in events(h.to_gateway(), OperatorEvent) if e.event == "handoff.accepted"]
        assert [(e.target, e.handoffs[0].live) for e in mine] == [(SID, False)]
        await h.start()  # the caller is back
        out = h.to_gateway()
        assert [e.event for e in events(out, HandoffEvent)] == ["handoff.started", "handoff.accepted"]
        assert [e.handoffs[0].live for e in events(out, OperatorEvent)] == [True]
        await final(h, "are you still there")
        assert [e.text for e in events(h.to_gateway(), OperatorEvent)] == ["are you still there"]
        await operator(h, "say", "yes I am here")
        assert await spoken(h) == ["yes I am here"]
        await h.orchestrator.store.close()

    run(InProcess(tmp_path), before)
    asyncio.run(after())
