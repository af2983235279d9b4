"""An ASR replay sends only the audio no final has covered yet: an answered utterance is never
heard, and answered, a second time.

The orchestrator keeps the current utterance's audio so that a dead ASR's work can be replayed to
its restart (orchestrator/recovery.py). A final transcript ends that: its audio is dropped from
the copy and the copy's place in the session's timeline moves on. When the ms/bytes conversion
there was wrong, the copy kept every answered utterance while its start moved on anyway, so a
replay re-sent the whole session with a shifted offset, the new ASR heard each old question again,
and the chaos loop (tests/test_chaos.py) got one more reply than it asked questions. In-process
(tests/harness.py): frames in through the real orchestrator's handlers, no sockets.

And a replay that reached its restarted worker is not taken for undelivered: the socket to an
endpoint is kept across restarts, and a send to the dead process that timed out left it marked
unreachable, so the replay to the new one read as failed, the session was set waiting for an
instance that was there, and request_timeout_s later the turn then in progress was failed with
`llm_unavailable` (a chaos-loop turn that never ended).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from common.frames import (
    AudioIn,
    ClearAudio,
    ErrorEvent,
    GenerateRequest,
    Ready,
    SessionStart,
    TranscriptChunk,
    WorkerExited,
)
from orchestrator.session import Session
from tests.harness import SID, InProcess

FRAME_MS = 20
BYTES_PER_MS = 32  # PCM16 mono at 16 kHz


def pcm(ms: int, value: int) -> bytes:
    """`ms` of audio whose every sample is `value`: which stretch a replay carries shows."""
    return value.to_bytes(2, "little") * (ms * BYTES_PER_MS // 2)


async def stream(h: InProcess, audio: bytes) -> None:
    frame = FRAME_MS * BYTES_PER_MS
    for seq, offset in enumerate(range(0, len(audio), frame), start=1):
        await h.ingress(AudioIn(session_id=SID, seq=seq, pcm=audio[offset : offset + frame]))


async def asr_restarted(h: InProcess) -> SessionStart:
    """The ASR process dies and its restart announces itself: what it is sent to replay."""
    h.to_worker("asr")  # (what the first instance was sent)
    await h.watchdog(WorkerExited(kind="asr", program="asr_worker", instance=0))
    assert h.to_worker("asr") == []  # nothing READY yet: the audio waits
    await h.result(Ready(kind="asr", instance_id="asr-0-restarted",
                         endpoint=h.settings.work_endpoint("asr", 0)))
    sent = h.to_worker("asr")
    assert sent and isinstance(sent[0], SessionStart), sent
    return sent[0]


def test_a_replay_after_an_answered_question_sends_only_the_audio_after_it(tmp_path: Path) -> None:
    h = InProcess(tmp_path)

    async def scenario() -> SessionStart:
        await h.ready()
        await h.start()
        await stream(h, pcm(2600, 1) + pcm(1400, 2))  # a question, then the next one begins
        await h.result(TranscriptChunk(session_id=SID, turn_id=1, text="what is the capital",
                                       is_final=True, start_ms=300, end_ms=2600, instance_id="asr-0"))
        requests = h.to_worker("llm")
        assert len(requests) == 1 and isinstance(requests[0], GenerateRequest)  # answered once
        return await asr_restarted(h)

    replay = asyncio.run(scenario())
    assert replay.offset_ms == 2600  # in the session's timeline: its finals' times stay true
    assert replay.pcm == pcm(1400, 2)  # the answered question is not in it


def test_a_replay_after_the_client_cleared_its_audio_sends_none_of_it(tmp_path: Path) -> None:
    h = InProcess(tmp_path)

    async def scenario() -> SessionStart:
        await h.ready()
        await h.start()
        await stream(h, pcm(1000, 1))
        await h.ingress(ClearAudio(session_id=SID))
        await stream(h, pcm(400, 2))
        return await asr_restarted(h)

    replay = asyncio.run(scenario())
    assert (replay.offset_ms, replay.pcm) == (1000, pcm(400, 2))


def test_the_kept_audio_and_its_place_in_the_timeline_agree() -> None:
    session = Session(session_id=SID, gateway_id="gw0", language="en", history_turns=4)
    session.keep_audio(pcm(1000, 1), max_bytes=200 * BYTES_PER_MS)  # capped: the last 200 ms
    assert (session.audio_start_ms, bytes(session.audio)) == (800, pcm(200, 1))
    session.keep_audio(pcm(20, 2), max_bytes=200 * BYTES_PER_MS + 7)  # (not whole ms: rounded)
    assert session.audio_start_ms + len(session.audio) // BYTES_PER_MS == 1020
    session.audio_heard_until(900)
    assert (session.audio_start_ms, bytes(session.audio)) == (900, pcm(100, 1) + pcm(20, 2))
    session.audio_heard_until(5000)  # past what is kept: all of it, never beyond
    assert (session.audio_start_ms, bytes(session.audio)) == (1020, b"")


def test_a_replay_to_a_restarted_worker_is_not_taken_for_undelivered(tmp_path: Path) -> None:
    h = InProcess(tmp_path, request_timeout_s=0.2)
    llm = h.settings.work_endpoint("llm", 0)

    async def scenario() -> list[object]:
        await h.ready()
        await h.start()
        await h.result(TranscriptChunk(session_id=SID, turn_id=1, text="count", is_final=True,
                                       end_ms=1000, instance_id="asr-0"))
        assert len(h.to_worker("llm")) == 1
        h.orchestrator.workers[llm].reachable = False  # a send to the dying process timed out
        await h.watchdog(WorkerExited(kind="llm", program="llm_worker", instance=0))
        await h.result(Ready(kind="llm", instance_id="llm-0-restarted", endpoint=llm))
        replay = h.to_worker("llm")
        assert len(replay) == 1 and isinstance(replay[0], GenerateRequest)  # (same socket)
        await asyncio.sleep(0.3)  # past request_timeout_s
        await h.orchestrator.recovery.expire_waits()
        return h.to_gateway()

    sent = asyncio.run(scenario())
    assert not [f for f in sent if isinstance(f, ErrorEvent)], sent  # nobody was waiting


def test_work_waiting_on_a_stalled_worker_is_replayed_once_it_takes_frames_again(
    tmp_path: Path,
) -> None:
    """A live worker whose last send timed out (a stall, no restart): the request put on it
    reads as undelivered and the session waits; no READY will come, so the orchestrator's tick
    replays the work once the worker takes frames again, instead of failing the turn later."""
    h = InProcess(tmp_path, request_timeout_s=0.5)
    llm = h.settings.work_endpoint("llm", 0)

    async def scenario() -> tuple[list[object], list[object], list[object]]:
        await h.ready()
        await h.start()
        h.orchestrator.workers[llm].reachable = False  # its last send timed out
        await h.result(TranscriptChunk(session_id=SID, turn_id=1, text="count", is_final=True,
                                       end_ms=1000, instance_id="asr-0"))
        h.to_worker("llm")  # (queued, but read as undelivered: the session waits)
        await h.orchestrator.recovery.retry_waits()
        still_stalled = h.to_worker("llm")
        h.orchestrator.workers[llm].reachable = True  # it takes frames again
        await h.orchestrator.recovery.retry_waits()
        replay = h.to_worker("llm")
        await asyncio.sleep(0.6)  # past request_timeout_s
        await h.orchestrator.recovery.expire_waits()
        return still_stalled, replay, h.to_gateway()

    still_stalled, replay, sent = asyncio.run(scenario())
    assert still_stalled == []  # nothing is replayed onto a peer still stalled
    assert len(replay) == 1 and isinstance(replay[0], GenerateRequest), replay
    assert not [f for f in sent if isinstance(f, ErrorEvent)], sent  # the turn was not failed


def test_no_replay_is_piled_onto_the_stalled_worker_a_session_is_pinned_to(tmp_path: Path) -> None:
    """Two LLM instances: the session's pinned one stalls while the other takes frames. The
    replay would go to the pinned one (it is alive), so the tick sends nothing until that one
    takes frames again."""
    h = InProcess(tmp_path, request_timeout_s=5.0, llm_replicas=2)
    pinned = h.settings.work_endpoint("llm", 0)

    async def scenario() -> tuple[list[object], list[object], list[object]]:
        await h.ready()
        await h.ready("llm", index=1)
        await h.start()
        h.orchestrator.workers[pinned].reachable = False
        await h.result(TranscriptChunk(session_id=SID, turn_id=1, text="count", is_final=True,
                                       end_ms=1000, instance_id="asr-0"))
        h.to_worker("llm", 0)  # (read as undelivered: the session waits)
        await h.orchestrator.recovery.retry_waits()
        stalled, other = h.to_worker("llm", 0), h.to_worker("llm", 1)
        h.orchestrator.workers[pinned].reachable = True
        await h.orchestrator.recovery.retry_waits()
        return stalled, other, h.to_worker("llm", 0)

    stalled, other, replay = asyncio.run(scenario())
    assert stalled == [] and other == []
    assert len(replay) == 1 and isinstance(replay[0], GenerateRequest), replay
