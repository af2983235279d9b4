"""`make bench`: latency of the real stack, and the ASR / streaming comparisons, as JSON.

1. Starts the five-process stack on free loopback ports and streams the synthetic questions in
   real time: one session at a time alternately over the WebSocket and WebRTC (aiortc client;
   `--only-transports` runs just this), then over the WebSocket one at a time and 4 at once.
2. Stops the stack, then in this process on the same clips and models: stock faster-whisper
   `transcribe()` against Inzwa's ASR path (latency and word error rate), and a sequential
   non-streaming cascade (transcribe all, generate all, synthesize all) for time to first audio.

Prints a table and writes bench/results/latest.json. Figures are medians and P95 over one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asr_worker.wer import corpus_wer
from bench import FIXTURES, ROOT
from bench.jobs import jobs_figures, print_jobs
from bench.realtime import compare as realtime_compare
from bench.rest import cache_figures, rest_figures
from bench.store import store_figures
from common.audio import pcm16_to_float
from common.languages import registry as languages
from common.models import resolve
from common.settings import Settings
from gateway.client import Talker, TalkResult, load_clip, speech_end_s

RESULTS = ROOT / "bench" / "results"


def pct(values: Sequence[float | None], q: float) -> float | None:
    clean = [v for v in values if v is not None]
    return None if not clean else round(float(np.percentile(clean, q)), 1)


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    return {"p50": pct(values, 50), "p95": pct(values, 95), "n": len([v for v in values if v is not None])}


def questions() -> list[Path]:
    """The English questions: the Shona ones need the Shona pack (and say little to an
    English ASR model), so they would only measure garbage."""
    return sorted(FIXTURES.glob("q_en_*.wav"))


async def one_turn(url: str, clip: Path) -> TalkResult:
    return await Talker(load_clip(clip), until_first_audio=True).run(url, timeout_s=90)


def turn_figures(results: list[TalkResult]) -> dict[str, Any]:
    def first_audio_after_token(r: TalkResult) -> float | None:
        if r.v2v_ms is None or r.first_token_ms is None:
            return None
        return r.v2v_ms - r.first_token_ms

    def ttft(r: TalkResult) -> float | None:
        if r.first_token_ms is None or r.asr_final_ms is None:
            return None
        return r.first_token_ms - r.asr_final_ms

    return {
        "turns": len(results),
        "failed": sum(1 for r in results if not r.completed or r.errors),
        "v2v_ms": summarize([r.v2v_ms for r in results]),
        "asr_final_ms": summarize([r.asr_final_ms for r in results]),
        "asr_partial_ms": summarize([lag for r in results for lag in r.partial_lags_ms]),
        "llm_ttft_ms": summarize([ttft(r) for r in results]),
        "tts_first_audio_ms": summarize([first_audio_after_token(r) for r in results]),
    }


async def sessions(url: str, rounds: int, concurrency: int) -> list[TalkResult]:
    clips = questions()
    results: list[TalkResult] = []
    for round_index in range(rounds):
        batch = [clips[(round_index * concurrency + i) % len(clips)] for i in range(concurrency)]
        results += await asyncio.gather(*(one_turn(url, clip) for clip in batch))
    return results


Turn = tuple[float | None, float | None]  # (client v2v to audible, the server's first_audio_ms)


async def ws_turn(url: str, clip: Path) -> Turn:
    result = await Talker(load_clip(clip)).run(url, timeout_s=90)  # through turn.metrics
    return result.audible_ms, result.metrics.get("first_audio_ms")


async def rtc_turn(http: str, clip: Path) -> Turn:
    """One turn over WebRTC: end of speech to the first audible reply frame off the track."""
    from gateway.rtc_client import connect

    call = await connect(http, language="en")
    try:
        call.play(load_clip(clip))
        await call.wait_for(lambda: call.of("turn.metrics") or call.of("error"), 90)
        metrics = call.of("turn.metrics")
        return call.v2v_ms(), metrics[0].get("first_audio_ms") if metrics else None
    finally:
        await call.close()


def transport_figures(turns: list[Turn]) -> dict[str, Any]:
    """v2v as the client felt it, and the part of it spent outside the server: the client's
    v2v less the server's own end-of-speech-to-first-audio (`turn.metrics`), which takes out
    ASR/LLM/TTS time (and so most of the noise of a busy machine)."""
    outside = [None if v is None or s is None else v - s for v, s in turns]
    return {"v2v_ms": summarize([v for v, _ in turns]), "outside_server_ms": summarize(outside)}


async def transports(stack: Any, rounds: int) -> dict[str, Any]:
    """One session at a time, the same clips alternately over the WebSocket and WebRTC, both
    measured to the first audible reply frame."""
    ws: list[Turn] = []
    rtc: list[Turn] = []
    for clip in questions() * rounds:
        ws.append(await ws_turn(stack.url, clip))
        rtc.append(await rtc_turn(stack.http, clip))
    figures = {"websocket": transport_figures(ws), "webrtc": transport_figures(rtc)}

    def extra(name: str) -> float | None:
        a, b = figures["webrtc"][name]["p50"], figures["websocket"][name]["p50"]
        return None if a is None or b is None else round(a - b, 1)
    return {**figures, "webrtc_extra_p50_ms": extra("v2v_ms"),
            "webrtc_extra_outside_server_p50_ms": extra("outside_server_ms"),
            "failed": sum(1 for v, s in ws + rtc if v is None or s is None)}


def realtime_figures(stack: Any, rounds: int) -> dict[str, Any]:
    """OpenAI Realtime v2v next to /ws/audio, one session at a time, same clips (bench/realtime.py)."""
    turns = asyncio.run(realtime_compare(stack, questions(), rounds))
    figures = {name: {"v2v_ms": summarize([v for v, _ in values]),
                      "after_asr_final_ms": summarize([None if v is None or f is None else v - f
                                                       for v, f in values])}
               for name, values in turns.items()}

    def extra(name: str) -> float | None:
        a, b = figures["realtime"][name]["p50"], figures["websocket"][name]["p50"]
        return None if a is None or b is None else round(a - b, 1)
    return {**figures, "realtime_extra_p50_ms": extra("v2v_ms"),
            "realtime_extra_after_asr_final_p50_ms": extra("after_asr_final_ms"),
            "failed": sum(1 for values in turns.values() for v, _ in values if v is None)}


def stack_figures(rounds: int, only_transports: bool = False, only_realtime: bool = False) -> dict[str, Any]:
    from tests.stack import Stack

    with tempfile.TemporaryDirectory(prefix="inzwa-bench-") as run_dir:
        stack = Stack(Path(run_dir), INZWA_ENABLE_WEBRTC="true")
        try:
            stack.start()
            asyncio.run(one_turn(stack.url, questions()[0]))  # warm every path once
            if only_realtime:
                return {"realtime": realtime_figures(stack, rounds)}
            asyncio.run(rtc_turn(stack.http, questions()[0]))
            figures = {"transports": asyncio.run(transports(stack, rounds))}
            if only_transports:
                return figures
            single = asyncio.run(sessions(stack.url, rounds * len(questions()), 1))
            concurrent = asyncio.run(sessions(stack.url, rounds * 2, 4))
            rest = rest_figures(stack.http, FIXTURES / "q_en_capital.wav")
            figures["tts_cache"] = cache_figures(stack.http)  # cold (never seen) vs cached (issue 13)
            figures["realtime"] = realtime_figures(stack, rounds)
            figures["jobs"] = jobs_figures(stack, questions(), rounds)  # job API vs /ws/audio
        finally:
            stack.stop()
    return {"one_session": turn_figures(single), "four_sessions": turn_figures(concurrent), "rest": rest,
            **figures}


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - started) * 1000


def human_clips() -> list[tuple[Path, str]]:
    rows = (FIXTURES / "transcripts.tsv").read_text().splitlines()[1:]
    return [(FIXTURES / name, text) for name, text in (row.split("\t", 1) for row in rows)]


def asr_comparison(settings: Settings) -> dict[str, Any]:
    """Stock faster-whisper transcribe() against Inzwa's ASR path, same model, same clips."""
    from asr_worker.engine import WhisperEngine

    engine = WhisperEngine.load(resolve(settings.asr_model, settings.models_dir),
                                compute_type=settings.asr_compute_type, threads=settings.asr_threads)
    engine.warmup()
    stock_ms, fast_ms, stock_pairs, fast_pairs = [], [], [], []
    for path, reference in human_clips():
        audio = pcm16_to_float(load_clip(path))
        stock, t_stock = timed(engine.transcribe_stock, audio, "en")
        fast, t_fast = timed(engine.transcribe, audio, "en")
        stock_ms.append(t_stock)
        fast_ms.append(t_fast)
        stock_pairs.append((reference, stock.text))
        fast_pairs.append((reference, fast.text))
    return {
        "clips": len(stock_ms),
        "stock_transcribe_ms": summarize(stock_ms),
        "inzwa_asr_ms": summarize(fast_ms),
        "latency_ratio_p50": round(statistics.median(stock_ms) / statistics.median(fast_ms), 2),
        "stock_wer": round(corpus_wer(stock_pairs), 4),
        "inzwa_wer": round(corpus_wer(fast_pairs), 4),
    }


def sequential_baseline(settings: Settings) -> dict[str, Any]:
    """Transcribe the whole utterance, generate the whole reply, synthesize it all."""
    from asr_worker.engine import WhisperEngine
    from llm_worker.engine import LlamaCppEngine
    from tts_worker.engine import PiperVoice

    asr = WhisperEngine.load(resolve(settings.asr_model, settings.models_dir),
                             compute_type=settings.asr_compute_type, threads=settings.asr_threads)
    llm = LlamaCppEngine.load(resolve(settings.llm_model, settings.models_dir),
                              threads=settings.llm_threads, temperature=settings.llm_temperature)
    tts = PiperVoice.load(resolve(settings.tts_model, settings.models_dir), threads=settings.tts_threads)
    for engine in (asr, llm, tts):
        engine.warmup()
    totals = []
    for clip in questions():
        pcm = load_clip(clip)
        speech = pcm16_to_float(pcm)[: int(speech_end_s(pcm) * 16000)]
        started = time.perf_counter()
        text = asr.transcribe_stock(speech, settings.effective_asr_language).text
        prompt = settings.system_prompt or languages.get(settings.language).system_prompt
        messages = [{"role": "system", "content": prompt}, {"role": "user", "content": text}]
        reply = "".join(llm.generate_stream(messages, max_new_tokens=settings.llm_max_new_tokens))
        audio = list(tts.synthesize_stream(reply))
        totals.append((time.perf_counter() - started) * 1000)
        assert audio, "the baseline produced no audio"
    return {"time_to_first_audio_ms": summarize(totals),
            "with_end_of_turn_ms": summarize([t + settings.vad_silence_ms for t in totals])}


def print_transports(figures: dict[str, Any]) -> None:
    for transport in ("websocket", "webrtc"):
        for name, value in figures[transport].items():
            print(f"{transport + '.' + name:<40}{value['p50']!s:>10}{value['p95']!s:>10}")
    for name in ("webrtc_extra_p50_ms", "webrtc_extra_outside_server_p50_ms"):
        print(f"{name:<40}{figures[name]!s:>10}")


def print_realtime(figures: dict[str, Any]) -> None:
    for name in ("websocket", "realtime"):
        for figure, value in figures[name].items():
            print(f"{'realtime_vs_ws.' + name + '.' + figure:<40}{value['p50']!s:>10}{value['p95']!s:>10}")
    for name in ("realtime_extra_p50_ms", "realtime_extra_after_asr_final_p50_ms"):
        print(f"{name:<40}{figures[name]!s:>10}")


def print_table(report: dict[str, Any]) -> None:
    print(f"{'figure':<40}{'p50':>10}{'p95':>10}")
    print_transports(report["stack"]["transports"])
    print_realtime(report["stack"]["realtime"])
    print_jobs(report["stack"]["jobs"])
    for scope in ("one_session", "four_sessions"):
        for name, value in report["stack"][scope].items():
            if isinstance(value, dict):
                print(f"{scope + '.' + name:<40}{value['p50']!s:>10}{value['p95']!s:>10}")
    for name, value in report["stack"]["rest"].items():
        print(f"{'rest.' + name:<40}{value['p50']!s:>10}")
    from bench.store import print_figures

    print_figures({"tts_cache": report["stack"]["tts_cache"], "store": report["store"]})
    asr = report["asr"]
    print(f"asr latency ratio (stock / inzwa)       {asr['latency_ratio_p50']:>10}")
    print(f"wer stock / inzwa                       {asr['stock_wer']:>10}{asr['inzwa_wer']:>10}")
    print(f"ttfa ratio (sequential / streaming)     {report['ttfa_ratio_p50']:>10}")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the question clips")
    parser.add_argument("--only-transports", action="store_true",
                        help="only the WebSocket / WebRTC comparison (bench/results/transports.json)")
    parser.add_argument("--only-realtime", action="store_true",
                        help="only OpenAI Realtime against /ws/audio (bench/results/realtime.json)")
    parser.add_argument("--only-latency", action="store_true",
                        help="only issue 15's figures: v2v at 1/4/8 sessions, length, end of turn "
                             "(bench/latency.py, bench/results/latency.json)")
    parser.add_argument("--only-caches", action="store_true",
                        help="only /v1/tts cold vs cached and the store's write latency "
                             "(bench/store.py, bench/results/conversations.json)")
    parser.add_argument("--only-batching", action="store_true",
                        help="only issue 15's batching and end-of-turn judges, offline: ASR, LLM and "
                             "TTS batched vs one by one, the LLM end-of-turn judge "
                             "(bench/results/{asr,llm,tts}_batch.json, turn_end_llm.json)")
    parser.add_argument("--only-handoff", action="store_true",
                        help="only the handoff triggers' cost per transcript (bench/handoff.py, "
                             "bench/results/handoff.json)")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    if args.only_handoff:
        from bench.handoff import main as handoff_main

        handoff_main()
        return
    if args.only_caches:
        from bench.store import conversations_main

        conversations_main()
        return
    if args.only_batching:
        batching_figures()
        return
    if args.only_latency:
        from bench import latency

        latency.main(args.rounds)
        return
    if args.only_realtime:
        figures = stack_figures(args.rounds, only_realtime=True)["realtime"]
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "realtime.json").write_text(json.dumps(figures, indent=2))
        print_realtime(figures)
        return
    if args.only_transports:
        figures = stack_figures(args.rounds, only_transports=True)["transports"]
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "transports.json").write_text(json.dumps(figures, indent=2))
        print_transports(figures)
        return
    full_bench(args.rounds)


def full_bench(rounds: int) -> None:
    """Every figure: the stack, the ASR and sequential comparisons, the store, the handoff
    triggers, issue 15's latency and its batching and end-of-turn judges."""
    settings = Settings()
    report: dict[str, Any] = {"machine": {"cpus": __import__("os").cpu_count(),
                                          "python": platform.python_version()},
                              "stack": stack_figures(rounds)}
    report["asr"] = asr_comparison(settings)
    report["sequential"] = sequential_baseline(settings)
    report["store"] = store_figures()  # per-turn write latency, 4 sessions at once (issue 13)
    from bench.handoff import handoff_figures

    report["handoff"] = handoff_figures()  # trigger cost per final transcript (issue 14)
    streaming = report["stack"]["one_session"]["v2v_ms"]["p50"]
    baseline = report["sequential"]["with_end_of_turn_ms"]["p50"]
    report["ttfa_ratio_p50"] = round(baseline / streaming, 2) if streaming else None
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2))
    print_table(report)
    print(json.dumps(report))
    from bench import latency  # issue 15: a stack of its own, so the figures above stay as they were

    latency.main(rounds)
    batching_figures()


def batching_figures() -> None:
    """Issue 15's engine-level figures, each module writing its own JSON with the previous run."""
    from bench import asr_batch, llm_batch, tts_batch, turn_end_llm

    asr_batch.main([])
    llm_batch.main([])
    tts_batch.main([])
    turn_end_llm.main()


if __name__ == "__main__":
    main()
