"""Token-level latency: the LLM worker's per-token histograms, the `turn.metrics` event's token
figures and the stage timings stored with each turn.

Unit tests drive the two small recorders directly; the end-to-end test speaks a fixture clip on
the fake stack (real processes, scripted engines) and checks that the histograms grew by exactly
the tokens the client was sent, that their sums agree with each other, and that the event and
the conversation store say the same.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from common.frames import TokenChunk
from common.settings import Settings
from gateway.client import Talker, load_clip
from gateway.token_rate import TokenRate
from llm_worker.token_clock import TokenClock
from tests.loopback import LOOPBACK
from tests.stack import Stack

HISTOGRAMS = ("inzwa_llm_token_since_request_ms", "inzwa_llm_token_interval_ms",
              "inzwa_llm_first_token_ms", "inzwa_llm_total_ms")


def local(name: str, suffix: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_{suffix}") or 0.0


def test_the_token_clock_counts_every_token_and_its_intervals() -> None:
    before = {name: (local(name, "count"), local(name, "sum")) for name in HISTOGRAMS}
    clock = TokenClock()
    for _ in range(5):
        time.sleep(0.01)
        clock.token()
    clock.done()
    grown = {name: (local(name, "count") - count, local(name, "sum") - total)
             for name, (count, total) in before.items()}
    counts = [grown[name][0] for name in HISTOGRAMS]
    assert counts == [5, 4, 1, 1]
    first, whole, gaps = (grown["inzwa_llm_first_token_ms"][1], grown["inzwa_llm_total_ms"][1],
                          grown["inzwa_llm_token_interval_ms"][1])
    assert 10 <= first <= whole and gaps >= 40  # each token slept 10 ms after the one before
    assert abs((whole - first) - gaps) < 0.01  # the intervals add up to first..last


def test_a_queued_requests_wait_counts_in_its_first_token() -> None:
    before = local("inzwa_llm_first_token_ms", "sum")
    clock = TokenClock(time.perf_counter() - 0.05)  # it arrived 50 ms ago, behind another
    clock.token()
    assert local("inzwa_llm_first_token_ms", "sum") - before >= 50


def test_a_generation_without_tokens_reports_no_total() -> None:
    before = local("inzwa_llm_total_ms", "count")
    TokenClock().done()
    assert local("inzwa_llm_total_ms", "count") == before


def test_token_rate_counts_one_turns_tokens_and_skips_typed_v2v() -> None:
    rate = TokenRate()
    for seq in range(1, 4):
        rate.observe(TokenChunk(turn_id=1, seq=seq, token=f" w{seq}"))
        time.sleep(0.01)
    rate.observe(TokenChunk(turn_id=1, token=""))  # an empty end marker is not a token
    figures = rate.finish(1, {"first_audio_ms": 120.0})
    assert figures["tokens"] == 3 and figures["v2v_ms"] == 120.0
    assert isinstance(figures["tokens_per_s"], float) and 0 < figures["tokens_per_s"] < 1000
    rate.typed()
    rate.observe(TokenChunk(turn_id=2, seq=1, token="one"))
    typed = rate.finish(2, {"first_audio_ms": 80.0})
    assert typed["tokens"] == 1 and typed["tokens_per_s"] is None and typed["v2v_ms"] is None


def test_token_rate_reads_the_workers_clock_not_a_burst_of_arrivals() -> None:
    rate = TokenRate()
    for seq, elapsed in enumerate((100.0, 120.0, 140.0, 160.0), start=1):  # 50 tokens/s...
        rate.observe(TokenChunk(turn_id=1, seq=seq, token=f" w{seq}", elapsed_ms=elapsed))
    assert rate.finish(1, {})["tokens_per_s"] == 50.0  # ...though all arrived at once here


def test_token_rate_skips_the_restart_of_a_replayed_generation() -> None:
    rate = TokenRate()
    for seq, elapsed in enumerate((100.0, 110.0, 30.0, 40.0, 50.0), start=1):  # clock restarts
        rate.observe(TokenChunk(turn_id=1, seq=seq, token=f" w{seq}", elapsed_ms=elapsed))
    figures = rate.finish(1, {})
    assert figures["tokens"] == 5 and figures["tokens_per_s"] == 100.0  # 3 steps of 10 ms


def scrape(stack: Stack) -> dict[str, float]:
    text = LOOPBACK.get(f"{stack.http}/metrics", headers=stack.admin_headers(), timeout=30).text
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith(HISTOGRAMS) and sample.name.endswith(("_count", "_sum"))}


@pytest.mark.e2e
def test_a_spoken_turn_reports_its_tokens_everywhere(fake_stack: Stack, fixtures_dir: Path) -> None:
    before = scrape(fake_stack)
    talker = Talker(load_clip(fixtures_dir / "q_en_capital.wav"))
    result = asyncio.run(talker.run(fake_stack.url, language="en", timeout_s=60))
    assert result.completed and not result.errors, result.summary()
    tokens = [e for e in result.events if e["type"] == "llm.partial"]
    grown = {name: value - before.get(name, 0.0) for name, value in scrape(fake_stack).items()}
    counts = [grown[f"{name}_count"] for name in HISTOGRAMS]
    assert counts == [len(tokens), len(tokens) - 1, 1, 1], grown
    span = grown["inzwa_llm_total_ms_sum"] - grown["inzwa_llm_first_token_ms_sum"]
    assert abs(span - grown["inzwa_llm_token_interval_ms_sum"]) < 0.5  # monotone: gaps add up
    _check_event(result.metrics, len(tokens))
    # the event's rate is the worker's own: its token gaps, not the burst they arrived in
    worker_rate = (len(tokens) - 1) / (grown["inzwa_llm_token_interval_ms_sum"] / 1000)
    assert result.metrics["tokens_per_s"] == pytest.approx(worker_rate, rel=0.01), result.metrics
    assert worker_rate <= Settings(_env_file=None).fake_llm_tokens_per_s * 1.02  # paced by sleeps
    stored = LOOPBACK.get(f"{fake_stack.http}/v1/sessions/{result.session_id}", timeout=30).json()
    timings = stored["messages"][-1]["timings"]
    assert timings["tokens"] == len(tokens), timings
    assert timings["first_token"] <= timings["last_token"] <= timings["tts_end"], timings
    assert timings["first_token"] <= timings["first_audio"] <= timings["tts_end"], timings


def _check_event(metrics: dict[str, object], tokens: int) -> None:
    assert metrics["type"] == "turn.metrics" and metrics["tokens"] == tokens, metrics
    stages = [metrics[k] for k in ("asr_final_ms", "first_token_ms", "first_audio_ms")]
    times = [v for v in stages if isinstance(v, float)]
    assert len(times) == 3 and times == sorted(times), metrics
    assert metrics["v2v_ms"] == metrics["first_audio_ms"]
    rate = metrics["tokens_per_s"]
    assert isinstance(rate, float) and rate > 0, metrics
