"""The overload ladder (orchestrator/overload.py): fewer partials, then shorter replies, then
refusal with a spoken busy line, each counted, with hysteresis on the way down.

The ladder alone with a load we set and a clock we move; then the real orchestrator in-process
(tests/harness.py): several sessions' turns in flight are the load, and what the LLM, the ASR
and the client are sent shows each level.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import websockets

from asr_worker.engines.fake import FakeAsr
from asr_worker.worker import AsrWorker
from common.audio import read_wav
from common.frames import (
    ChatJob,
    ChatMessage,
    ErrorEvent,
    GenerateRequest,
    PlaybackMark,
    Ready,
    SessionConfig,
    SessionEnd,
    SessionStart,
    TextIn,
    TokenChunk,
    TranscriptChunk,
    TurnEvent,
    TurnHypothesis,
    WorkerExited,
)
from common.languages import registry as languages
from common.metrics import OVERLOAD_ACTIONS, OVERLOAD_ENTERED, OVERLOAD_LEVEL
from common.settings import Settings
from orchestrator.overload import (
    FEWER_PARTIALS,
    NORMAL,
    REFUSING,
    SHORTER_REPLIES,
    Ladder,
    busy_line,
    slots,
)
from tests.harness import SID, InProcess
from tests.stack import Stack, fake_env, serving
from tests.test_turns_inprocess import final, speak

LADDER = {"overload_partials_at": 2.0, "overload_shorter_at": 4.0, "overload_refuse_at": 8.0,
          "overload_hysteresis": 0.25, "overload_hold_s": 2.0, "overload_reply_tokens": 16}


def entered(level: str) -> float:
    return OVERLOAD_ENTERED.labels(level)._value.get()


def actions(action: str) -> float:
    return OVERLOAD_ACTIONS.labels(action)._value.get()


class Bench:
    """A ladder over a load and a clock the test sets; records the partials switch."""

    def __init__(self, **overrides: Any) -> None:
        self.load, self.now = 0.0, 100.0
        self.switched: list[bool] = []
        settings = Settings(_env_file=None, **{**LADDER, **overrides})  # type: ignore[call-arg]
        self.ladder = Ladder(settings, lambda: self.load, on_partials=self._switch,
                             clock=lambda: self.now)

    async def _switch(self, on: bool) -> None:
        self.switched.append(on)

    def at(self, load: float, *, later_s: float = 0.0) -> int:
        self.load, self.now = load, self.now + later_s
        return asyncio.run(self.ladder.update())


# --- the ladder alone -----------------------------------------------------------------------------


def test_levels_rise_in_the_documented_order_as_the_load_rises() -> None:
    bench = Bench()
    before = {name: entered(name) for name in ("fewer_partials", "shorter_replies", "refusing")}
    levels = [bench.at(load) for load in (0, 1, 1.9, 2, 3, 4, 7.9, 8, 12)]
    assert levels == [NORMAL, NORMAL, NORMAL, FEWER_PARTIALS, FEWER_PARTIALS, SHORTER_REPLIES,
                      SHORTER_REPLIES, REFUSING, REFUSING]
    assert {name: entered(name) - n for name, n in before.items()} == {
        "fewer_partials": 1, "shorter_replies": 1, "refusing": 1}
    assert OVERLOAD_LEVEL._value.get() == REFUSING
    assert bench.switched == [False]  # partials off once, at level 1
    assert bench.ladder.refusing and not bench.ladder.partials_on


def test_a_jump_counts_every_level_passed_and_the_way_down_is_one_step_per_hold() -> None:
    bench = Bench()
    before = entered("fewer_partials"), entered("shorter_replies")
    assert bench.at(20) == REFUSING  # straight up: no turn waits for the ladder to climb
    assert (entered("fewer_partials") - before[0], entered("shorter_replies") - before[1]) == (1, 1)
    assert bench.at(0) == REFUSING  # held for overload_hold_s
    steps = [bench.at(0, later_s=2.0) for _ in range(4)]
    assert steps == [SHORTER_REPLIES, FEWER_PARTIALS, NORMAL, NORMAL]
    assert bench.switched == [False, True]
    assert OVERLOAD_LEVEL._value.get() == NORMAL


def test_hysteresis_keeps_a_level_while_the_load_hovers_around_its_threshold() -> None:
    bench = Bench()
    before = entered("fewer_partials")
    hovering = [bench.at(load, later_s=3.0) for load in (2.1, 1.9, 2.1, 1.6, 2.0, 1.9)]
    assert hovering == [FEWER_PARTIALS] * 6  # 1.5 (2 x 0.75) is the way down, not 2
    assert entered("fewer_partials") - before == 1 and bench.switched == [False]
    assert bench.at(1.4, later_s=3.0) == NORMAL
    assert bench.switched == [False, True]


def test_a_level_set_to_zero_is_skipped_and_thresholds_must_rise() -> None:
    bench = Bench(overload_shorter_at=0)
    assert bench.at(5) == FEWER_PARTIALS  # no "shorter replies" level to enter
    assert bench.at(9) == REFUSING
    assert bench.ladder.reply_tokens(80) == 80  # that level's action is off too
    assert [bench.at(0, later_s=2.0) for _ in range(2)] == [FEWER_PARTIALS, NORMAL]  # not via it
    with pytest.raises(ValueError, match="must rise"):
        Bench(overload_shorter_at=10)


def test_the_reply_budget_is_cut_only_at_level_two_and_counted() -> None:
    bench = Bench()
    before = actions("shorter_reply")
    bench.at(2)
    assert bench.ladder.reply_tokens(80) == 80
    bench.at(4)
    assert (bench.ladder.reply_tokens(80), bench.ladder.reply_tokens(10)) == (16, 10)
    assert actions("shorter_reply") - before == 1  # counted only where it cut


def test_slots_come_from_what_each_llm_instance_can_serve_at_once() -> None:
    settings = Settings(_env_file=None, llm_concurrency=4)  # type: ignore[call-arg]
    assert slots([{"engine": "llama-cpp"}, {"engine": "llama-cpp"}], settings) == 2
    assert slots([{"engine": "openai"}, {"engine": "llama-cpp", "concurrency": "3"}], settings) == 7
    assert slots([], settings) == 0


def test_every_pack_has_a_busy_line() -> None:
    for code in languages.codes():
        pack = languages.get(code)
        assert busy_line(pack) == pack.fallbacks["busy"] != pack.fallback("unavailable")


# --- the orchestrator under load (in-process) ------------------------------------------------------

OTHERS = [f"9c1f2e55-0d4b-4c6a-8f3e-5a7b9d1e2f3{n}" for n in range(1, 4)]
Scenario = Callable[[InProcess], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario, **overrides: Any) -> None:
    """Four sessions on one LLM slot; levels at 1, 2 and 3 turns in flight, no hold."""
    h = InProcess(tmp_path, llm_concurrency=1, overload_partials_at=1, overload_shorter_at=2,
                  overload_refuse_at=3, overload_hold_s=0, overload_reply_tokens=16, **overrides)

    async def main() -> None:
        await h.ready()
        for session_id in [SID, *OTHERS]:
            await h.start(session_id)
        h.to_worker("asr")
        try:
            await scenario(h)
        finally:
            await h.orchestrator.turns.flush()
            await h.orchestrator.store.close()

    asyncio.run(main())


async def ask(h: InProcess, session_id: str, text: str) -> list[Any]:
    """A typed turn in `session_id`; what the LLM was sent for it."""
    await h.ingress(TextIn(session_id=session_id, text=text))
    return [f for f in h.to_worker("llm") if isinstance(f, GenerateRequest)]


def partials_told(h: InProcess) -> list[tuple[str, bool]]:
    return sorted((f.session_id, f.partials) for f in h.to_worker("asr") if isinstance(f, SessionConfig))


def test_under_load_partials_go_off_then_new_turns_get_the_shorter_budget(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> None:
        before = actions("partials_off"), actions("shorter_reply")
        (first,) = await ask(h, OTHERS[0], "one")
        assert first.max_new_tokens == h.settings.llm_max_new_tokens and partials_told(h) == []
        (second,) = await ask(h, OTHERS[1], "two")  # one turn ahead of it: level 1
        assert second.max_new_tokens == h.settings.llm_max_new_tokens
        assert partials_told(h) == sorted((s, False) for s in [SID, *OTHERS])
        (third,) = await ask(h, OTHERS[2], "three")  # two ahead: level 2, a shorter reply
        assert third.max_new_tokens == 16
        assert (actions("partials_off") - before[0], actions("shorter_reply") - before[1]) == (4, 1)
        assert h.orchestrator.overload.level == SHORTER_REPLIES
        await h.orchestrator.tick()
        assert h.orchestrator.overload.level == REFUSING  # at rest, all three count
        for request in (first, second, third):  # the queue drains: back to normal, step by step
            await h.result(TokenChunk(session_id=request.session_id, turn_id=request.turn_id,
                                      request_id=request.request_id, token="Done.", is_final=True))
        levels = []
        for _ in range(3):
            await h.orchestrator.tick()
            levels.append(h.orchestrator.overload.level)
        assert levels == [SHORTER_REPLIES, FEWER_PARTIALS, NORMAL]
        assert partials_told(h) == sorted((s, True) for s in [SID, *OTHERS])
        (after,) = await ask(h, SID, "four")
        assert after.max_new_tokens == h.settings.llm_max_new_tokens

    run(tmp_path, scenario)


def test_a_stream_opened_under_load_a_replay_included_starts_without_partials(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> None:
        for session_id, text in zip(OTHERS[:2], ("one", "two"), strict=True):
            await ask(h, session_id, text)
        assert not h.orchestrator.overload.partials_on
        h.to_worker("asr")
        late = "9c1f2e55-0d4b-4c6a-8f3e-5a7b9d1e2f39"
        await h.start(late)
        opened = [(type(f), getattr(f, "partials", None)) for f in h.to_worker("asr")]
        assert opened == [(SessionStart, None), (SessionConfig, False)]
        await h.watchdog(WorkerExited(kind="asr", program="asr_worker", instance=0))
        await h.result(Ready(kind="asr", instance_id="asr-0-new",
                             endpoint=h.settings.work_endpoint("asr", 0)))
        replayed = [(type(f), f.session_id, getattr(f, "partials", None)) for f in h.to_worker("asr")]
        for session_id in [SID, *OTHERS, late]:  # each stream reopened, then told
            at = replayed.index((SessionStart, session_id, None))
            assert replayed[at + 1] == (SessionConfig, session_id, False), replayed

    run(tmp_path, scenario)


def test_the_load_counts_speculative_replies_and_chat_jobs_but_not_speaking_turns(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> None:
        load = h.orchestrator._llm_load
        await h.result(TurnHypothesis(session_id=SID, text="will it rain", instance_id="asr-0"))
        (speculative,) = h.to_worker("llm")
        assert load() == 1.0  # an early reply takes the slot as much as a committed one
        await h.ingress(ChatJob(session_id="job-1", messages=[ChatMessage("user", "hi")],
                                language="en", gateway_id="gw0"))
        assert load() == 2.0
        await h.result(TokenChunk(session_id=SID, turn_id=speculative.turn_id, token="Maybe.",
                                  request_id=speculative.request_id, is_final=True))
        assert load() == 1.0  # its words are all in: only speaking is left, no LLM work
        await h.result(Ready(kind="llm", instance_id="llm-1", endpoint=h.settings.work_endpoint("llm", 1)))
        assert load() == 0.5  # a second instance, a second slot

    run(tmp_path, scenario, llm_replicas=2)


def test_at_the_last_level_a_new_turn_hears_the_busy_line_and_is_kept(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> None:
        before = actions("refused")
        for session_id, text in zip(OTHERS, ("one", "two", "three"), strict=True):
            assert len(await ask(h, session_id, text)) == 1
        h.to_gateway()
        assert await ask(h, SID, "are you there") == []  # three ahead: refused, no LLM call
        assert h.orchestrator.overload.level == REFUSING and actions("refused") - before == 1
        out = h.to_gateway()
        errors = [f for f in out if isinstance(f, ErrorEvent) and f.session_id == SID]
        assert [(e.code, e.fatal) for e in errors] == [("overloaded", False)]
        busy = languages.get("en").fallback("busy")
        phrases = h.to_worker("tts")  # (cut into its sentences, as any reply)
        assert " ".join(p.text for p in phrases) == busy and {p.session_id for p in phrases} == {SID}
        for phrase in phrases:
            await speak(h, phrase)
        ends = [f for f in h.to_gateway() if isinstance(f, TurnEvent) and f.event == "tts.end"]
        assert [(e.session_id, e.text) for e in ends] == [(SID, busy)]
        stored = [(m.role, m.text) for m in await h.orchestrator.store.messages(SID)]
        assert stored == [("user", "are you there"), ("assistant", busy)]  # nothing silently lost
        await h.ingress(PlaybackMark(session_id=SID, turn_id=1, done=True))
        history = [(m.role, m.content) for m in h.orchestrator.sessions[SID].history]
        assert history == [("user", "are you there"), ("assistant", busy)]

    run(tmp_path, scenario)


def test_no_speculative_reply_is_started_while_refusing(tmp_path: Path) -> None:
    async def scenario(h: InProcess) -> None:
        for session_id, text in zip(OTHERS, ("one", "two", "three"), strict=True):
            await ask(h, session_id, text)
        await h.orchestrator.tick()
        assert h.orchestrator.overload.refusing
        await h.result(TurnHypothesis(session_id=SID, text="hello", instance_id="asr-0"))
        assert h.orchestrator.sessions[SID].turn is None and h.to_worker("llm") == []
        await h.result(TranscriptChunk(session_id=SID, text="hello", is_final=True, instance_id="asr-0"))
        assert any(isinstance(f, TokenChunk) and f.session_id == SID and f.token
                   == languages.get("en").fallback("busy") for f in h.to_gateway())

    run(tmp_path, scenario)


def test_at_rest_the_ladder_changes_nothing(tmp_path: Path) -> None:
    """The ladder at rest changes nothing: one session's spoken turn gets the full budget."""

    async def scenario(h: InProcess) -> None:
        request = await final(h, 1, "hello")
        assert request.max_new_tokens == h.settings.llm_max_new_tokens
        assert h.orchestrator.overload.level == NORMAL

    run(tmp_path, scenario)


# --- level 1 in the ASR worker itself (fake recogniser, real webrtcvad) ----------------------------


def _transcripts(pcm: bytes, partials: bool) -> list[bool]:
    """is_final of each transcript the ASR worker sends for `pcm` fed in 20 ms frames, after the
    orchestrator's SessionConfig with `partials`."""
    said: list[Any] = []

    async def emit(frame: Any) -> None:
        said.append(frame)

    async def main() -> None:
        settings = Settings(_env_file=None, turn_end="silence")  # type: ignore[call-arg]
        worker = AsrWorker(FakeAsr("what is the capital of zimbabwe"), settings)
        worker.runtime = SimpleNamespace(emit=emit, instance_id="asr-0")  # type: ignore[assignment]
        await worker.handle(SessionStart(session_id=SID))
        await worker.handle(SessionConfig(session_id=SID, partials=partials))
        stream = worker.streams[SID]
        for at in range(0, len(pcm), 640):  # one frame at a time: never behind, never congested
            await worker._process(stream, pcm[at: at + 640])
        await worker.handle(SessionEnd(session_id=SID))

    asyncio.run(main())
    return [f.is_final for f in said if isinstance(f, TranscriptChunk)]


def test_the_asr_sends_no_partials_while_the_ladder_asks_for_none(fixtures_dir: Path) -> None:
    speech = read_wav(fixtures_dir / "q_en_capital.wav")[0] + b"\0" * 32 * 1500
    normal, fewer = _transcripts(speech, True), _transcripts(speech, False)
    assert normal.count(False) >= 1 and normal[-1:] == [True]  # partial(s), then the final
    assert fewer == [True]  # the final alone


# --- end to end: real processes, fake engines, a ladder that refuses at one turn in flight -----------


@pytest.fixture(scope="module")
def busy_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One LLM slot and a slow fake LLM: a second turn while one is generating is refused."""
    overrides = fake_env(INZWA_LLM_CONCURRENCY="1", INZWA_FAKE_LLM_TOKENS_PER_S="4",
                         INZWA_OVERLOAD_PARTIALS_AT="1", INZWA_OVERLOAD_SHORTER_AT="1",
                         INZWA_OVERLOAD_REFUSE_AT="1")
    with serving(Stack(tmp_path_factory.mktemp("busy-stack"), **overrides)) as running:
        yield running


async def _typed(url: str, text: str) -> Any:
    ws = await websockets.connect(url, open_timeout=10, close_timeout=5, max_size=None)
    await ws.send(json.dumps({"type": "start", "language": "en"}))
    started = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert started["type"] == "session.started", started
    await ws.send(json.dumps({"type": "text", "text": text}))
    return ws


async def _events_until_end(ws: Any, timeout_s: float) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []

    async def receive() -> None:
        async for message in ws:
            if isinstance(message, str):
                events.append(json.loads(message))
                if events[-1]["type"] == "tts.end":
                    return

    await asyncio.wait_for(receive(), timeout_s)
    return events


@pytest.mark.e2e
def test_a_turn_while_the_only_llm_slot_is_busy_hears_the_busy_line(busy_stack: Stack) -> None:
    refused = busy_stack.metric("inzwa_overload_actions_total", 'action="refused"')

    async def main() -> list[dict[str, Any]]:
        first = await _typed(busy_stack.url, "tell me a long story about the market")
        try:
            while json.loads(await asyncio.wait_for(first.recv(), 10)).get("type") != "llm.partial":
                pass  # (its reply is being generated: the slot is taken)
            second = await _typed(busy_stack.url, "are you there")
            try:
                return await _events_until_end(second, 20)
            finally:
                await second.close()
        finally:
            await first.close()

    events = asyncio.run(main())
    busy = languages.get("en").fallback("busy")
    assert [(e["type"], e.get("code")) for e in events if e["type"] == "error"] == [("error", "overloaded")]
    assert events[-1]["type"] == "tts.end" and events[-1]["text"] == busy, events
    assert busy_stack.metric("inzwa_overload_actions_total", 'action="refused"') - refused == 1
    assert busy_stack.metric("inzwa_overload_level_entered_total", 'level="refusing"') >= 1
