"""The per-session settings and the client's cancel behind OpenAI Realtime, in-process.

The real orchestrator (tests/harness.py): a session's own instructions are in the system prompt
its LLM turns are sent (below the server's), before and after a `SessionConfig`; its
end-of-turn silence reaches the ASR; the ASR's speech onset is forwarded to the gateway before
the cut it causes; a `CancelTurn` stops the LLM and TTS at once and the history keeps what was
heard, a heard mark after it included. And the real ASR session (fake recogniser, real
webrtcvad): the session's silence decides when the turn ends, from the next utterance when it
changes; and the gateway's conversation tells speech_started at the onset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from asr_worker.engines.fake import FakeAsr
from asr_worker.session import AsrSession, Transcript
from asr_worker.worker import AsrWorker
from common.audio import read_wav
from common.frames import (
    AudioIn,
    Cancel,
    CancelTurn,
    ClearAudio,
    EndTurn,
    Frame,
    GatewayHeartbeat,
    GenerateRequest,
    HistoryAdd,
    HistoryDelete,
    HistoryReply,
    HistoryRequest,
    PlaybackMark,
    Ready,
    Respond,
    SessionConfig,
    SessionEnd,
    SessionStart,
    SynthesizeRequest,
    TranscriptChunk,
    TurnEvent,
    VadEvent,
    WorkerExited,
    encode,
    ingress_decoder,
)
from common.settings import Settings
from gateway.realtime_config import RealtimeConfig
from gateway.realtime_conversation import Conversation
from orchestrator import client_turns
from orchestrator.session import TurnState
from tests.harness import SID, InProcess
from tests.test_orchestrator import llm_tokens
from tests.test_turns_inprocess import final, speak, tokens

PROMPT = "You are a pirate. Answer in one sentence."


def run(tmp_path: Path, scenario: Callable[[InProcess], Awaitable[Any]], **start: Any) -> Any:
    h = InProcess(tmp_path)

    async def main() -> Any:
        await h.ready()
        await h.ingress(GatewayHeartbeat(gateway_id="gw0", incarnation="i1"))
        await h.ingress(SessionStart(session_id=SID, gateway_id="gw0", principal="p1", **start))
        return await scenario(h)

    return asyncio.run(main())


def test_the_sessions_own_prompt_is_the_system_prompt_of_its_turns(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> None:
        started = h.to_worker("asr")
        assert [(type(f), f.silence_ms) for f in started] == [(SessionStart, 1200)]  # to the ASR
        first = await final(h, 1, "hello")
        # The server's prompt ("SYSTEM" here) first, always; the session's own below it.
        assert (first.messages[0].role, first.messages[0].content) == ("system", f"SYSTEM\n\n{PROMPT}")
        await h.ingress(SessionConfig(session_id=SID, system_prompt="Speak Shona.", silence_ms=800))
        assert [(type(f), f.silence_ms) for f in h.to_worker("asr")] == [(SessionConfig, 800)]
        second = await final(h, 2, "tell me more")
        assert second.messages[0].content == "SYSTEM\n\nSpeak Shona."
        await h.ingress(HistoryRequest(session_id=SID, request_id="r1", gateway_id="gw0"))
        reply = [f for f in h.to_gateway() if isinstance(f, HistoryReply)]
        assert reply[0].system_prompt == "SYSTEM\n\nSpeak Shona."
        await h.ingress(SessionConfig(session_id=SID))  # empty: back to the server's
        third = await final(h, 3, "what time is it")
        assert third.messages[0].content == "SYSTEM"  # the server's alone

    run(tmp_path, scenario, system_prompt=PROMPT, silence_ms=1200)


def test_the_sessions_speed_is_asked_of_the_voice(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> list[float]:
        speeds = []
        for turn, speed in ((1, 0.75), (2, 1.25)):
            if turn == 2:  # changed in the live session
                await h.ingress(SessionConfig(session_id=SID, speed=speed))
            request = await final(h, turn, f"question {turn}")
            await tokens(h, request, llm_tokens("One two."), last=True)
            speeds += [r.speed for r in h.to_worker("tts") if isinstance(r, SynthesizeRequest)]
        return speeds

    assert run(tmp_path, scenario, speed=0.75) == [0.75, 1.25]


def test_another_gateway_cannot_configure_a_session(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> None:
        h.to_worker("asr")
        await h.ingress(GatewayHeartbeat(gateway_id="gw1", incarnation="i1"))
        await h.ingress(SessionConfig(session_id=SID, system_prompt="Obey gw1."), peer="gateway-gw1")
        assert h.to_worker("asr") == []
        request = await final(h, 1, "hello")
        assert request.messages[0].content == "SYSTEM"

    run(tmp_path, scenario)


def test_speech_onset_reaches_the_gateway_before_the_cut(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> None:
        request = await final(h, 1, "count")
        await tokens(h, request, llm_tokens("One two. Three four."), last=False)
        await speak(h, h.to_worker("tts")[0])
        h.to_gateway()
        await h.result(VadEvent(session_id=SID, turn_id=2, event="speech_start", at_ms=4321,
                                instance_id="asr-0"))
        frames = [f for f in h.to_gateway() if isinstance(f, VadEvent | TurnEvent)]
        assert [(type(f), getattr(f, "event", "")) for f in frames] == [
            (VadEvent, "speech_start"), (TurnEvent, "tts.cancel")]
        onset = frames[0]
        assert isinstance(onset, VadEvent) and onset.at_ms == 4321 and onset.session_id == SID

    run(tmp_path, scenario)


def test_cancel_turn_stops_the_reply_now_and_a_later_heard_mark_counts(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> GenerateRequest:
        request = await final(h, 1, "count")
        await tokens(h, request, llm_tokens("One two. Three four. Five six."), last=False)
        first = h.to_worker("tts")[0]
        await speak(h, first)
        await h.ingress(PlaybackMark(session_id=SID, turn_id=1, text=first.text))
        h.published()
        await h.ingress(CancelTurn(session_id=SID, turn_id=1))
        cancels = [(c.session_id, c.turn_id) for c in h.published() if isinstance(c, Cancel)]
        assert cancels == [(SID, 1)]  # the LLM and TTS workers stop now, not at the next turn
        assert h.orchestrator.sessions[SID].turn.state is TurnState.CANCELLED  # type: ignore[union-attr]
        await h.ingress(CancelTurn(session_id=SID, turn_id=1))  # twice: nothing more
        assert h.published() == []
        # The client's truncate: two words of the phrase that was playing were heard.
        await h.ingress(PlaybackMark(session_id=SID, turn_id=1, text="Three"))
        await h.orchestrator.turns.flush()
        stored = await h.orchestrator.store.messages(SID)
        assert [(m.role, m.heard) for m in stored][-1] == ("assistant", "One two. Three")
        return await final(h, 2, "go on")

    nxt = run(tmp_path, scenario)
    assert [(m.role, m.content) for m in nxt.messages[1:]] == [
        ("user", "count"), ("assistant", "One two. Three"), ("user", "go on")]


# --- the ASR session's end-of-turn silence --------------------------------------------------------

def _final_at(session: AsrSession, pcm: bytes) -> list[int]:
    """Stream ms (from the start of `pcm`) at which each final came, fed in 20 ms frames."""
    out = []
    for index, at in enumerate(range(0, len(pcm), 640)):
        if any(isinstance(e, Transcript) and e.is_final for e in session.feed(pcm[at: at + 640])):
            out.append((index + 1) * 20)
    return out


def test_the_sessions_silence_decides_when_its_turn_ends(fixtures_dir: Path) -> None:
    speech = read_wav(fixtures_dir / "q_en_capital.wav")[0]
    utterance = speech + b"\0" * 32 * 2500  # 2.5 s of quiet after the question
    settings = Settings(_env_file=None, turn_end="silence", vad_silence_ms=400)  # type: ignore[call-arg]
    worker = AsrWorker(FakeAsr("what is the capital of zimbabwe"), settings)
    server = _final_at(worker._new_session("en"), utterance)
    own = _final_at(worker._new_session("en", silence_ms=1500), utterance)
    assert len(server) == len(own) == 1
    assert 1000 <= own[0] - server[0] <= 1200, (server, own)  # 1500 - 400, on the frame grid
    # Changed in the session: the utterance open keeps its own, the next one ends later.
    session = worker._new_session("en")
    first = _final_at(session, utterance)
    session.set_silence_ms(1500)
    second = _final_at(session, utterance)
    assert first == server and 1000 <= second[0] - first[0] <= 1200, (first, second)


# --- the gateway's Realtime conversation ------------------------------------------------------------

def test_speech_started_is_told_at_the_onset_once_per_utterance() -> None:
    async def scenario() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def emit(event: dict[str, Any]) -> None:
            sent.append(event)

        config = RealtimeConfig(Settings(), "gpt-realtime", "alloy", "en")
        conversation = Conversation(config, emit)
        await conversation.speech_started(1300)  # the ASR's onset, before any words
        await conversation.on_event({"type": "asr.partial", "text": "what is", "start_ms": 1250})
        await conversation.on_event({"type": "asr.final", "text": "what is it", "end_ms": 3600})
        config.server_vad = False  # manual turns: no VAD events
        await conversation.speech_started(5000)
        return sent

    sent = asyncio.run(scenario())
    kinds = [e["type"] for e in sent]
    assert kinds[:2] == ["input_audio_buffer.speech_started",
                         "conversation.item.input_audio_transcription.delta"], kinds
    assert kinds.count("input_audio_buffer.speech_started") == 1
    assert sent[0]["audio_start_ms"] == 1300
    assert {e.get("item_id") for e in sent[:3]} == {sent[0]["item_id"]}


# --- the dialogue history a client edits (item.create, item.delete, response.create) ---------------

def wire(frame: Frame) -> Any:
    """Through msgpack and the orchestrator's ingress decoder, as the gateway's frames go."""
    return ingress_decoder().decode(encode(frame))


async def answered(h: InProcess, request: GenerateRequest, reply: str) -> None:
    """The reply is generated, spoken and played out: the turn is in the history."""
    await tokens(h, request, llm_tokens(reply), last=True)
    for phrase in h.to_worker("tts"):
        await speak(h, phrase)
    await h.ingress(PlaybackMark(session_id=SID, turn_id=request.turn_id, done=True))
    h.to_gateway()


def said(request: GenerateRequest) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in request.messages[1:]]


def test_a_deleted_message_leaves_the_history_and_the_store(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> GenerateRequest:
        await answered(h, await final(h, 1, "my name is Tendai"), "Hello Tendai.")
        await answered(h, await final(h, 2, "what is two and two"), "Four.")
        await h.ingress(wire(HistoryDelete(session_id=SID, turn_id=1, role="user")))
        await h.ingress(wire(HistoryDelete(session_id=SID, turn_id=2, role="assistant")))
        await h.ingress(wire(HistoryDelete(session_id=SID, turn_id=9, role="user")))  # none: nothing
        stored = [(m.turn_id, m.role) for m in await h.orchestrator.store.messages(SID)]
        assert stored == [(1, "assistant"), (2, "user")]
        return await final(h, 3, "and now")

    request = run(tmp_path, scenario)
    assert said(request) == [("assistant", "Hello Tendai."), ("user", "what is two and two"),
                             ("user", "and now")]


def test_added_messages_join_the_history_without_a_reply_and_can_go(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> GenerateRequest:
        await h.ingress(wire(HistoryAdd(session_id=SID, role="user", text="Hi, I am Rudo.", item_id="i1")))
        await h.ingress(wire(HistoryAdd(session_id=SID, role="assistant", text="Hello Rudo!", item_id="i2")))
        await h.ingress(wire(HistoryAdd(session_id=SID, role="system", text="Be brief.", item_id="i3")))
        await h.ingress(wire(HistoryAdd(session_id=SID, role="tool", text="x", item_id="i4")))  # refused
        assert h.to_worker("llm") == []  # no reply to any of them
        stored = [(m.role, m.text) for m in await h.orchestrator.store.messages(SID)]
        assert ("user", "Hi, I am Rudo.") in stored and ("assistant", "Hello Rudo!") in stored
        first = await final(h, 4, "who am I")
        assert first.messages[0].content == "SYSTEM\n\nBe brief."  # (one system message, first)
        assert said(first) == [("user", "Hi, I am Rudo."), ("assistant", "Hello Rudo!"),
                               ("user", "who am I")]
        h.orchestrator.sessions[SID].turn = None  # (that reply is not the point here)
        await h.ingress(wire(HistoryDelete(session_id=SID, role="assistant", item_id="i2")))
        await h.ingress(wire(HistoryDelete(session_id=SID, role="system", item_id="i3")))
        assert [m.role for m in await h.orchestrator.store.messages(SID)].count("assistant") == 0
        return await final(h, 5, "again")

    second = run(tmp_path, scenario)
    assert second.messages[0].content == "SYSTEM"
    assert said(second) == [("user", "Hi, I am Rudo."), ("user", "again")]


def test_respond_with_nothing_pending_replies_from_the_history(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> GenerateRequest:
        await h.ingress(wire(Respond(session_id=SID, instructions="Greet the caller.")))
        greeting = h.to_worker("llm")
        assert len(greeting) == 1 and said(greeting[0]) == []  # the assistant speaks first
        assert greeting[0].messages[0].content == "SYSTEM\n\nGreet the caller."
        await h.ingress(wire(Respond(session_id=SID)))  # while it is under way: that one answers
        assert h.to_worker("llm") == []
        await answered(h, greeting[0], "Good morning.")
        return await final(h, 2, "good morning to you")

    request = run(tmp_path, scenario)
    assert request.messages[0].content == "SYSTEM"  # those instructions were for that reply only
    assert said(request) == [("assistant", "Good morning."), ("user", "good morning to you")]


def test_manual_turns_are_answered_only_when_asked(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> list[GenerateRequest]:
        await h.result(TranscriptChunk(session_id=SID, text="first part", is_final=True, instance_id="asr-0"))
        await h.ingress(EndTurn(session_id=SID))  # the client's commit...
        await h.ingress(wire(Respond(session_id=SID, instructions="Answer in Shona.")))  # ...and ask
        assert h.to_worker("llm") == []  # the committed turn's final is not in yet
        await h.result(TranscriptChunk(session_id=SID, text="second part", is_final=True,
                                       instance_id="asr-0"))
        asked = h.to_worker("llm")
        await answered(h, asked[0], "Ndatenda.")
        await h.ingress(EndTurn(session_id=SID))
        await h.ingress(wire(Respond(session_id=SID)))
        await h.result(TranscriptChunk(session_id=SID, is_final=True, instance_id="asr-0"))  # nothing heard
        return [*asked, *h.to_worker("llm")]

    first, second = run(tmp_path, scenario, manual_turns=True)
    assert first.messages[0].content == "SYSTEM\n\nAnswer in Shona."
    assert said(first) == [("user", "first part second part")]
    assert said(second) == [("user", "first part second part"), ("assistant", "Ndatenda.")]


def test_the_sessions_own_prompt_is_stored_and_shown_after_it_ends(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> list[str]:
        shown = []
        await h.ingress(SessionConfig(session_id=SID, system_prompt="Speak Shona."))
        for _ in range(2):  # live, then ended
            await h.ingress(HistoryRequest(session_id=SID, request_id="r", gateway_id="gw0", principal="p1"))
            shown += [f.system_prompt for f in h.to_gateway() if isinstance(f, HistoryReply)]
            await h.ingress(SessionEnd(session_id=SID, reason="bye"))
        return shown

    assert run(tmp_path, scenario, system_prompt=PROMPT) == ["SYSTEM\n\nSpeak Shona."] * 2


def test_cleared_audio_resets_the_asr_stream(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> None:
        h.to_worker("asr")
        await h.ingress(AudioIn(session_id=SID, seq=1, pcm=b"\1\0" * 3200))
        await h.ingress(wire(ClearAudio(session_id=SID)))
        assert [type(f) for f in h.to_worker("asr")] == [AudioIn, ClearAudio]
        assert len(h.orchestrator.sessions[SID].audio) == 0  # nor replayed to another ASR

    run(tmp_path, scenario)


def test_cleared_audio_never_becomes_a_transcript(fixtures_dir: Path) -> None:
    """The ASR worker resets the session's stream at ClearAudio, in order with its audio; a
    manual end of turn then gets an empty final (nothing left to hear)."""
    speech = read_wav(fixtures_dir / "q_en_capital.wav")[0]
    said: list[Any] = []

    async def emit(frame: Any) -> None:
        said.append(frame)

    async def main() -> list[str]:
        worker = AsrWorker(FakeAsr("what is the capital of zimbabwe"), Settings(_env_file=None))  # type: ignore[call-arg]
        worker.runtime = SimpleNamespace(emit=emit, instance_id="asr-0")  # type: ignore[assignment]
        finals: list[str] = []
        for clear in (True, False):
            await worker.handle(SessionStart(session_id=SID, manual_turns=True))
            await worker.handle(AudioIn(session_id=SID, pcm=speech[: len(speech) // 2 // 2 * 2]))
            if clear:
                await worker.handle(ClearAudio(session_id=SID))
            await worker.handle(EndTurn(session_id=SID))
            for _ in range(500):  # 5 s at most
                ends = [f.text for f in said if isinstance(f, TranscriptChunk) and f.is_final]
                if ends:
                    break
                await asyncio.sleep(0.01)
            finals += ends
            said.clear()
        await worker.handle(SessionEnd(session_id=SID))
        return finals

    assert asyncio.run(main()) == ["", "what is the capital of zimbabwe"]  # (not cleared: heard)


def test_a_reply_asked_for_a_manual_turn_whose_final_never_comes_is_not_lost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_turns, "FINAL_WAIT_S", 0.05)

    async def scenario(h: InProcess) -> list[GenerateRequest]:
        await h.result(TranscriptChunk(session_id=SID, text="are you there", is_final=True,
                                       instance_id="asr-0"))
        await h.ingress(EndTurn(session_id=SID))
        await h.ingress(Respond(session_id=SID))
        assert h.to_worker("llm") == []
        await asyncio.sleep(0.3)  # (the ASR that had the turn's end died: no final)
        return list(h.to_worker("llm"))

    asked = run(tmp_path, scenario, manual_turns=True)
    assert len(asked) == 1 and said(asked[0]) == [("user", "are you there")]


def test_a_question_deleted_before_its_reply_began_is_forgotten_with_that_turn() -> None:
    async def scenario() -> list[tuple[str, int]]:
        forgotten: list[tuple[str, int]] = []

        async def emit(event: dict[str, Any]) -> None:
            return None

        async def forget(item: Any) -> None:
            forgotten.append((item.id, item.turn_id))

        conversation = Conversation(RealtimeConfig(Settings(), "gpt-realtime", "alloy", "en"), emit)
        conversation.forget = forget
        await conversation.on_event({"type": "asr.final", "text": "hello", "end_ms": 900})
        question = conversation.items[-1]
        conversation.items.remove(question)  # what item.delete does to it (server VAD, no turn yet)
        conversation.deleted.append(question)
        assert forgotten == []
        await conversation.on_event({"type": "llm.partial", "turn_id": 7, "token": "Hi"})
        return [*forgotten, (question.id, 0)]

    forgotten = asyncio.run(scenario())
    assert forgotten[:1] == [(forgotten[1][0], 7)]  # told with the turn that answers it


def test_a_question_deleted_while_its_reply_is_generated_is_not_remembered(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> GenerateRequest:
        request = await final(h, 1, "hello")
        await h.ingress(wire(HistoryDelete(session_id=SID, turn_id=1, role="user")))
        await answered(h, request, "Hi there.")
        assert [m.role for m in await h.orchestrator.store.messages(SID) if m.text] == ["assistant"]
        return await final(h, 2, "and now")

    assert said(run(tmp_path, scenario)) == [("assistant", "Hi there."), ("user", "and now")]


def test_an_asr_replayed_to_keeps_the_sessions_manual_turns(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> list[Any]:
        h.to_worker("asr")
        await h.ingress(AudioIn(session_id=SID, seq=1, pcm=b"\1\0" * 3200))
        await h.ingress(SessionConfig(session_id=SID, manual_turns=True))
        h.to_worker("asr")
        await h.watchdog(WorkerExited(kind="asr", program="asr_worker", instance=0))
        await h.result(Ready(kind="asr", instance_id="asr-0-new",
                             endpoint=h.settings.work_endpoint("asr", 0)))
        return h.to_worker("asr")

    replay = [f for f in run(tmp_path, scenario) if isinstance(f, SessionStart)]
    assert len(replay) == 1 and replay[0].manual_turns and replay[0].pcm  # (its finals stay held)


def test_a_manual_turn_is_one_item_with_all_its_words() -> None:
    async def scenario() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def emit(event: dict[str, Any]) -> None:
            sent.append(event)

        config = RealtimeConfig(Settings(), "gpt-realtime", "alloy", "en")
        config.server_vad = False
        conversation = Conversation(config, emit)
        await conversation.on_event({"type": "asr.final", "text": "first part", "end_ms": 900})  # a pause
        await conversation.commit_manually()  # the client's commit
        await conversation.on_event({"type": "asr.final", "text": "second part", "end_ms": 2000})
        return sent

    sent = asyncio.run(scenario())
    assert [e["type"] for e in sent] == ["input_audio_buffer.committed", "conversation.item.added",
                                         "conversation.item.input_audio_transcription.completed"]
    assert sent[-1]["transcript"] == "first part second part"
    assert sent[-1]["item_id"] == sent[0]["item_id"]
