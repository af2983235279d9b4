"""Turn, recovery and plane-trust logic of the real orchestrator, in-process (tests/harness.py).

Frames go in through the orchestrator's handlers and we assert what each peer was sent; no
socket, no process. (tests/test_orchestrator.py keeps the checks that need real sockets.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.frames import (
    AdminReply,
    AdminRequest,
    AudioChunk,
    AudioIn,
    Cancel,
    EndTurn,
    ErrorEvent,
    GatewayHeartbeat,
    GenerateRequest,
    Heartbeat,
    HistoryReply,
    HistoryRequest,
    PlaybackMark,
    Ready,
    SessionEnd,
    SessionStart,
    SynthesizeRequest,
    TextIn,
    TokenChunk,
    TranscriptChunk,
    TurnEvent,
    TurnHypothesis,
    VadEvent,
    WorkerError,
    WorkerExited,
)
from common.metrics import DROPPED_FRAMES
from orchestrator.session import TurnState
from tests.harness import SID, InProcess
from tests.test_orchestrator import llm_tokens

Scenario = Callable[[InProcess], Awaitable[None]]


@pytest.fixture
def h(tmp_path: Path) -> Iterator[InProcess]:
    yield InProcess(tmp_path)


def run(h: InProcess, scenario: Scenario) -> None:
    async def main() -> None:
        await h.ready()
        await h.start()
        assert [type(f) for f in h.to_worker("asr")] == [SessionStart]
        await scenario(h)

    asyncio.run(main())


def dropped(reason: str) -> float:
    return DROPPED_FRAMES.labels(reason)._value.get()


async def final(h: InProcess, turn: int, text: str) -> GenerateRequest:
    await h.result(TranscriptChunk(session_id=SID, turn_id=turn, text=text, is_final=True,
                                   instance_id="asr-0"))
    requests = h.to_worker("llm")
    assert len(requests) == 1 and isinstance(requests[0], GenerateRequest), requests
    return requests[0]


async def tokens(h: InProcess, request: GenerateRequest, words: list[str], *, last: bool) -> None:
    for seq, word in enumerate(words):
        await h.result(TokenChunk(session_id=SID, turn_id=request.turn_id, seq=seq,
                                  request_id=request.request_id, token=word))
    if last:
        await h.result(TokenChunk(session_id=SID, turn_id=request.turn_id,
                                  request_id=request.request_id, is_final=True))


async def speak(h: InProcess, phrase: SynthesizeRequest) -> None:
    for seq in range(2):
        await h.result(AudioChunk(session_id=SID, turn_id=phrase.turn_id, seq=seq,
                                  request_id=phrase.request_id, payload=b"\x01\x00" * 320))
    await h.result(AudioChunk(session_id=SID, turn_id=phrase.turn_id, seq=2, is_final=True,
                              request_id=phrase.request_id, text=phrase.text))


# --- turns ----------------------------------------------------------------------------------------


def test_a_turn_goes_through_its_states_to_the_history(h: InProcess) -> None:
    async def scenario(h: InProcess) -> None:
        request = await final(h, 1, "hello")
        assert [m.role for m in request.messages] == ["system", "user"]
        turn = h.orchestrator.sessions[SID].turn
        assert turn is not None and turn.state is TurnState.GENERATING
        await tokens(h, request, llm_tokens("Hi there. Nice day."), last=True)
        assert turn.state is TurnState.SYNTHESIZING
        phrases = h.to_worker("tts")
        assert [p.text for p in phrases] == ["Hi there.", "Nice day."]
        for phrase in phrases:
            await speak(h, phrase)
        assert turn.state is TurnState.FORWARDED
        out = h.to_gateway()
        assert [f.event for f in out if isinstance(f, TurnEvent)] == ["tts.start", "tts.end"]
        await h.ingress(PlaybackMark(session_id=SID, turn_id=1, done=True))
        assert turn.state is TurnState.DONE
        again = await final(h, 2, "and now")
        assert [(m.role, m.content) for m in again.messages][1:] == [
            ("user", "hello"), ("assistant", "Hi there. Nice day."), ("user", "and now")]

    run(h, scenario)


def test_barge_in_cancels_and_keeps_only_what_was_heard(h: InProcess) -> None:
    async def scenario(h: InProcess) -> None:
        request = await final(h, 1, "count")
        await tokens(h, request, llm_tokens("One two. Three four. Five six."), last=False)
        first = h.to_worker("tts")[0]
        await speak(h, first)
        await h.ingress(PlaybackMark(session_id=SID, turn_id=1, text=first.text))
        await h.result(VadEvent(session_id=SID, event="speech_start", instance_id="asr-0"))
        cancels = [f for f in h.published() if isinstance(f, Cancel)]
        assert [(c.session_id, c.turn_id) for c in cancels] == [(SID, 1)]
        assert h.orchestrator.sessions[SID].turn.state is TurnState.CANCELLED  # type: ignore[union-attr]
        assert [f.event for f in h.to_gateway() if isinstance(f, TurnEvent)][-1] == "tts.cancel"
        late = AudioChunk(session_id=SID, turn_id=1, request_id=first.request_id, payload=b"\1\0")
        await h.result(late)
        assert h.to_gateway() == []  # a cancelled turn's late audio goes nowhere
        nxt = await final(h, 2, "stop")
        assert ("assistant", "One two.") in [(m.role, m.content) for m in nxt.messages]

    run(h, scenario)


def test_an_early_reply_is_held_then_committed_or_discarded(h: InProcess) -> None:
    async def scenario(h: InProcess) -> None:
        await h.result(TurnHypothesis(session_id=SID, text="Will it rain?", instance_id="asr-0"))
        request = h.to_worker("llm")[0]
        await tokens(h, request, llm_tokens("Maybe."), last=True)
        await speak(h, h.to_worker("tts")[0])
        assert h.to_gateway() == []  # held
        await h.result(TranscriptChunk(session_id=SID, text="will it rain", is_final=True,
                                       instance_id="asr-0"))
        out = h.to_gateway()
        assert isinstance(out[0], TranscriptChunk)
        assert [f.event for f in out if isinstance(f, TurnEvent)] == ["tts.start", "tts.end"]
        await h.ingress(PlaybackMark(session_id=SID, turn_id=1, done=True))
        await h.result(TurnHypothesis(session_id=SID, text="Tell me", instance_id="asr-0"))
        speculative = h.to_worker("llm")[0]
        await h.result(VadEvent(session_id=SID, event="speech_resume", instance_id="asr-0"))
        assert any(isinstance(f, Cancel) and f.turn_id == speculative.turn_id for f in h.published())
        assert h.to_gateway() == []  # a discarded speculation leaves no trace

    run(h, scenario)


def test_a_silent_llm_gets_a_spoken_fallback_and_shorter_replies(h: InProcess) -> None:
    async def scenario(h: InProcess) -> None:
        request = await final(h, 1, "hello")
        turn = h.orchestrator.sessions[SID].turn
        assert turn is not None
        turn.progress_at = time.monotonic() - h.settings.llm_timeout_s - 1  # silent that long
        await h.orchestrator.tick()
        cancels = [f for f in h.published() if isinstance(f, Cancel)]
        assert [c.request_id for c in cancels] == [request.request_id]
        assert h.to_worker("tts")[0].text.startswith("Sorry")
        assert h.orchestrator.sessions[SID].max_new_tokens == request.max_new_tokens // 2

    run(h, scenario)


def test_a_failed_llm_gets_the_error_then_a_spoken_fallback_after_what_was_said(h: InProcess) -> None:
    async def scenario(h: InProcess) -> None:
        request = await final(h, 1, "hello")
        await tokens(h, request, llm_tokens("Hi there. And"), last=False)
        await h.result(WorkerError(session_id=SID, turn_id=1, request_id=request.request_id,
                                   kind="llm", code="llm_failed", message="server gone"))
        errors = [f for f in h.to_gateway() if isinstance(f, ErrorEvent)]
        assert [e.code for e in errors] == ["llm_failed"]
        phrases = h.to_worker("tts")
        assert [p.text for p in phrases] == ["Hi there.", "Sorry, I cannot answer right now."]
        for phrase in phrases:
            await speak(h, phrase)
        rest = [p.text for p in h.to_worker("tts")]
        assert rest == ["Please try again in a moment."]  # the unfinished "And" is not said
        await h.result(TokenChunk(session_id=SID, turn_id=1, request_id=request.request_id,
                                  token=" late", is_final=True))  # the dead request's tail
        assert h.to_worker("tts") == []
        turn = h.orchestrator.sessions[SID].turn
        assert turn is not None and turn.reply_text == (
            "Hi there. Sorry, I cannot answer right now. Please try again in a moment.")
        stale = WorkerError(session_id=SID, turn_id=1, request_id="old", kind="llm", code="llm_failed")
        await h.result(stale)  # an error for a request the turn has left: no second fallback
        assert h.to_worker("tts") == []

    run(h, scenario)


def test_a_lost_llm_is_replayed_on_its_restart_after_the_text_sent(h: InProcess) -> None:
    async def scenario(h: InProcess) -> None:
        request = await final(h, 1, "count")
        await tokens(h, request, ["One", ","], last=False)
        await h.watchdog(WorkerExited(kind="llm", program="llm_worker", instance=0))
        assert h.to_worker("llm") == []  # nothing READY yet: the turn waits
        await h.result(Ready(kind="llm", instance_id="llm-0-new",
                             endpoint=h.settings.work_endpoint("llm", 0)))
        replay = h.to_worker("llm")
        assert len(replay) == 1 and replay[0].prefix == "One," and replay[0].request_id != request.request_id

    run(h, scenario)


# --- trust: sessions belong to their gateway and principal --------------------------------------


def test_a_start_for_a_live_session_from_another_gateway_or_principal_is_refused(h: InProcess) -> None:
    async def scenario(h: InProcess) -> None:
        for gateway_id, principal in (("gw1", "p1"), ("gw0", "p2")):
            await h.ingress(GatewayHeartbeat(gateway_id=gateway_id, incarnation="i1"))
            await h.ingress(SessionStart(session_id=SID, gateway_id=gateway_id, principal=principal))
            refusal = h.to_gateway(gateway_id)
            assert len(refusal) == 1 and isinstance(refusal[0], ErrorEvent)
            assert (refusal[0].code, refusal[0].fatal) == ("session_unavailable", True)
        session = h.orchestrator.sessions[SID]
        assert (session.gateway_id, session.principal) == ("gw0", "p1")  # untouched
        assert h.to_worker("asr") == []  # no new ASR stream for the taker
        await final(h, 1, "still mine")
        assert any(isinstance(f, TranscriptChunk) for f in h.to_gateway("gw0"))
        assert h.to_gateway("gw1") == []

    run(h, scenario)


def test_frames_for_unknown_or_foreign_sessions_are_dropped(h: InProcess) -> None:
    async def scenario(h: InProcess) -> None:
        before = dropped("unknown_session")
        other = "00000000-0000-4000-8000-000000000000"
        for frame in (AudioIn(session_id=other, pcm=b"\0\0" * 320), EndTurn(session_id=other),
                      PlaybackMark(session_id=other, done=True), TextIn(session_id=other, text="hi"),
                      SessionEnd(session_id=other)):
            await h.ingress(frame)
        # under CURVE the key names the gateway: gw1's key cannot act on gw0's session
        await h.ingress(AudioIn(session_id=SID, pcm=b"\0\0" * 320), peer="gateway-gw1")
        await h.ingress(SessionEnd(session_id=SID), peer="gateway-gw1")
        assert h.to_worker("asr") == [] and SID in h.orchestrator.sessions
        assert dropped("unknown_session") - before == 7
        await h.ingress(AudioIn(session_id=SID, pcm=b"\0\0" * 320), peer="gateway-gw0")
        assert [type(f) for f in h.to_worker("asr")] == [AudioIn]

    run(h, scenario)


def test_a_frame_claiming_another_gateway_than_its_key_is_refused(h: InProcess) -> None:
    async def scenario(h: InProcess) -> None:
        before = dropped("not_permitted")
        await h.ingress(HistoryRequest(session_id=SID, gateway_id="gw0", request_id="r"),
                        peer="gateway-gw1")
        await h.ingress(SessionStart(session_id="s2", gateway_id="gw0"), peer="gateway-gw1")
        await h.ingress(HistoryRequest(session_id=SID, request_id="r"), peer="worker")
        assert dropped("not_permitted") - before == 3
        assert h.to_gateway("gw0") == [] and h.to_gateway("gw1") == []
        assert "s2" not in h.orchestrator.sessions

    run(h, scenario)


def test_history_is_answered_to_the_asker_and_found_only_for_the_holder(h: InProcess) -> None:
    async def scenario(h: InProcess) -> None:
        asks = {"gw1": HistoryRequest(session_id=SID, request_id="a", gateway_id="gw1",
                                      reply_to="tcp://evil.example:1"),
                "gw0": HistoryRequest(session_id=SID, request_id="b", gateway_id="gw0")}
        for request in asks.values():
            await h.ingress(request)
        (foreign,), (own,) = h.to_gateway("gw1"), h.to_gateway("gw0")
        assert isinstance(foreign, HistoryReply) and not foreign.found and foreign.messages == []
        assert isinstance(own, HistoryReply) and own.found and own.request_id == "b"
        await h.ingress(HistoryRequest(session_id=SID, request_id="c", gateway_id="gw1", admin=True))
        assert h.to_gateway("gw1")[0].found  # an admin's request, vouched for by its gateway

    run(h, scenario)


# --- trust: workers ------------------------------------------------------------------------------


def test_only_configured_work_endpoints_are_announced(h: InProcess) -> None:
    async def scenario(h: InProcess) -> None:
        before = dropped("not_permitted")
        evil = "tcp://127.0.0.1:1"
        await h.result(Ready(kind="llm", instance_id="llm-evil", endpoint=evil))
        await h.result(Heartbeat(kind="llm", instance_id="llm-evil2", endpoint=evil))
        await h.result(Ready(kind="llm", instance_id="llm-9", endpoint=h.settings.work_endpoint("llm", 9)))
        assert dropped("not_permitted") - before == 3
        assert [i.instance_id for i in h.orchestrator.registry.alive("llm")] == ["llm-0"]
        await h.watchdog(WorkerExited(kind="llm", program="llm_worker", instance=5))  # no such replica
        assert [i.instance_id for i in h.orchestrator.registry.alive("llm")] == ["llm-0"]

    run(h, scenario)


# --- gateways that die or restart ----------------------------------------------------------------


def test_a_silent_gateway_has_its_sessions_ended(h: InProcess) -> None:
    async def scenario(h: InProcess) -> None:
        await final(h, 1, "hello")  # a turn under way, pinned to an LLM
        asr = h.orchestrator.registry.get("asr-0")
        assert asr is not None and asr.sessions == 1
        h.orchestrator.gateways.links["gw0"].last_seen -= h.orchestrator.gateways.liveness_s + 1
        await h.orchestrator.tick()
        assert SID not in h.orchestrator.sessions
        assert [type(f) for f in h.to_worker("asr")] == [SessionEnd]
        assert any(isinstance(f, Cancel) and f.session_id == SID for f in h.published())
        assert all(i.sessions == 0 for i in h.orchestrator.registry.all())  # pins freed

    run(h, scenario)


def test_a_restarted_gateway_ends_its_old_sessions_at_once(h: InProcess) -> None:
    async def scenario(h: InProcess) -> None:
        await h.ingress(GatewayHeartbeat(gateway_id="gw0", incarnation="i1"))
        assert SID in h.orchestrator.sessions
        await h.ingress(GatewayHeartbeat(gateway_id="gw0", incarnation="i2"))
        assert SID not in h.orchestrator.sessions
        assert [type(f) for f in h.to_worker("asr")] == [SessionEnd]

    run(h, scenario)



def test_a_gateway_without_a_configured_endpoint_gets_nothing(tmp_path: Path) -> None:
    """Over tcp the orchestrator answers only gateways it is configured for: an unknown
    gateway_id opens no session and gets no answer (a frame cannot name its own address)."""
    h = InProcess(tmp_path, zmq_transport="tcp",
                  gateway_egress_endpoints={"gw1": "tcp://127.0.0.1:7001"})

    async def scenario(h: InProcess) -> None:
        await h.ingress(SessionStart(session_id="s9", gateway_id="gw9", reply_to="tcp://evil:1"))
        await h.ingress(HistoryRequest(session_id=SID, gateway_id="gw9", request_id="r"))
        assert "s9" not in h.orchestrator.sessions and h.to_gateway("gw9") == []
        assert "gw9" not in h.orchestrator.gateway_out
        await h.ingress(HistoryRequest(session_id=SID, gateway_id="gw1", request_id="r"))
        assert [type(f) for f in h.to_gateway("gw1")] == [HistoryReply]  # a configured one is

    run(h, scenario)


def test_an_orchestrator_that_learns_a_worker_from_its_heartbeat_knows_its_checksums(
        tmp_path: Path) -> None:
    """After an orchestrator restart the workers are known from heartbeats alone: /v1/models
    must still list what each one loaded, checksum included."""
    h = InProcess(tmp_path)
    info = {"name": "whisper-base", "version": "1", "sha256": "ab" * 32, "device": "cpu",
            "engine": "faster-whisper"}

    async def main() -> list[Any]:
        await h.result(Heartbeat(kind="asr", instance_id="asr-0-x", model="whisper-base",
                                 endpoint=h.settings.work_endpoint("asr", 0), info=info))
        await h.ingress(GatewayHeartbeat(gateway_id="gw0", incarnation="i1"))
        await h.ingress(AdminRequest(request_id="m1", action="models", gateway_id="gw0"))
        return h.to_gateway()

    replies = asyncio.run(main())
    assert len(replies) == 1 and isinstance(replies[0], AdminReply), replies
    asr = [m for m in replies[0].models if m.role == "asr"]
    assert [(m.name, m.sha256, m.engine) for m in asr] == [("whisper-base", "ab" * 32, "faster-whisper")]
