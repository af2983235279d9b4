"""Shared fixtures: paths, settings, and real models loaded once per test session."""

from __future__ import annotations

import ast
import functools
import os
from pathlib import Path
from typing import Any

import pytest

from common.settings import Settings
from tests.stack import FAKE_ENGINES, FAKE_TTS_MS_PER_CHAR, UNLIMITED, fake_env, serving

__all__ = ["FAKE_ENGINES", "FAKE_TTS_MS_PER_CHAR"]  # (imported from here by the stack tests)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    path = Path(os.environ.get("INZWA_FIXTURES_DIR", ROOT.parent / "shared" / "fixtures" / "speech"))
    if not path.is_dir():
        pytest.fail(f"speech fixtures not found at {path} (set INZWA_FIXTURES_DIR)")
    return path


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def whisper_engine(settings: Settings):
    """The real Whisper engine, loaded once for every test that needs it."""
    from asr_worker.engine import WhisperEngine
    from common.models import resolve

    path = resolve(settings.asr_model, settings.models_dir)
    return WhisperEngine.load(path, compute_type=settings.asr_compute_type, threads=settings.asr_threads)


@pytest.fixture(scope="session")
def piper_voice(settings: Settings):
    """The real Piper VITS voice, loaded once for every test that needs it."""
    from common.models import resolve
    from tts_worker.engine import PiperVoice

    return PiperVoice.load(resolve(settings.tts_model, settings.models_dir), threads=settings.tts_threads)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """The real five-process stack under supervisord, on free loopback ports, once per session."""
    from tests.stack import Stack

    # The chaos test kills workers far more often than real failures would: give the shared
    # stack a restart budget to match (the default budget is tested on a stack of its own).
    # Replies of at most 48 tokens (~10 s of speech) keep the suite quick; paced playback
    # otherwise makes every test that waits for tts.end wait for the whole answer. A session's
    # partial decodes may take a quarter of real time (the default budget is half): the suite
    # runs many sessions at once on two cores, and partials still come, further apart (the
    # budget's own behaviour; the partials tests check they arrive and grow into the final).
    running = Stack(tmp_path_factory.mktemp("stack"), INZWA_RESTART_BUDGET="40",
                    INZWA_LLM_MAX_NEW_TOKENS="48", INZWA_ASR_PARTIAL_BUDGET="0.25", **UNLIMITED,
                    INZWA_ENABLE_WEBRTC="true")  # the browser and WebRTC tests use /rtc/session
    with serving(running):
        yield running


@pytest.fixture(scope="session")
def fake_stack(tmp_path_factory: pytest.TempPathFactory):
    """The real five processes, supervisor and watchdog, with the scripted fake engines: for
    supervision and chaos tests, where what is under test is recovery, not the models. Fakes load
    at once, so a killed worker is back in about a second instead of a model reload."""
    from tests.stack import Stack

    with serving(Stack(tmp_path_factory.mktemp("fake-stack"),
                       **fake_env(INZWA_RESTART_BUDGET="60"))) as running:
        yield running


@pytest.fixture(scope="session")
def deterministic_stack(tmp_path_factory: pytest.TempPathFactory):
    """fake_stack's real processes and fake engines, with the LLM at temperature 0 (so the
    response cache is on) and a 2 s orchestrator idle timeout: for the idle GC and response
    cache tests (tests/test_idle_gc.py, tests/test_response_cache.py), which must not change
    the shared fake_stack's behaviour."""
    from tests.stack import Stack

    with serving(Stack(tmp_path_factory.mktemp("deterministic-stack"),
                       **fake_env(INZWA_LLM_TEMPERATURE="0", INZWA_SESSION_IDLE_S="2"))) as running:
        yield running


@pytest.fixture(scope="session")
def llm_engine(settings: Settings):
    """The real GGUF model through llama-cpp-python, loaded once."""
    from common.models import resolve
    from llm_worker.engine import LlamaCppEngine

    return LlamaCppEngine.load(resolve(settings.llm_model, settings.models_dir),
                               threads=settings.llm_threads, temperature=0.0)


# `make test` runs the suite in parallel (pytest-xdist): each worker is a test session of its
# own, so a session fixture starts once in every worker that uses it. A file's tests go to one
# worker (their module fixtures start once), except that the tests taking the real stack go in
# two groups of about equal time (the browser's CPU-heavy one apart from the rest), so that
# stack, with its models, starts twice; a file's other tests (no stack, or the fake one) stay out
# of those groups, free to run beside them. A fake-engine stack starts in a second or two: its
# tests spread freely, but the deterministic stack's few stay together. (xdist's own `loadgroup`
# marks do not work with this pytest: xdist renames node ids to group them, which pytest 9 no
# longer lets it do.)
REAL_STACK_FIRST_HALF = {"test_browser.py", "test_webrtc.py", "test_ws_session.py",
                         "test_turn_end_stack.py", "test_certs_mic.py"}


def _group_of_test(nodeid: str) -> str:
    """The worker group of a test, from the stack fixtures it takes (directly or through the
    fixtures of its file)."""
    path, _, name = nodeid.partition("::")
    fixtures, tests = _definitions(path)
    taken, todo = set(), list(tests.get(name.split("[", 1)[0], ()))
    while todo:
        if (arg := todo.pop()) not in taken:
            taken.add(arg)
            todo += fixtures.get(arg, ())
    if "stack" in taken:
        return "stack-1" if Path(path).name in REAL_STACK_FIRST_HALF else "stack-2"
    return "deterministic_stack" if "deterministic_stack" in taken else path


@functools.cache
def _definitions(path: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """A test file's fixtures and tests, each with its parameter names (what pytest injects)."""
    fixtures: dict[str, list[str]] = {}
    tests: dict[str, list[str]] = {}
    file = ROOT / path
    if file.suffix != ".py" or not file.is_file():
        return fixtures, tests
    for node in ast.parse(file.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = [arg.arg for arg in node.args.args]
            if any("fixture" in ast.unparse(d) for d in node.decorator_list):
                fixtures[node.name] = args
            elif node.name.startswith("test_"):
                tests[node.name] = args
    return fixtures, tests


# Seconds the long groups take in a full `make test` (4 workers, 2026-11-30). The scheduler
# hands the longest out first, so no worker picks up a long group when the others are nearly
# done (longest-first packing; xdist's own order, most tests first, left one worker ~80 s
# behind the rest in one run). A group not listed weighs 0.15 s a test, as the short ones do.
GROUP_SECONDS = {
    "stack-2": 262, "stack-1": 244, "test_chaos.py": 101, "test_compose.py": 96,
    "test_engine_stack.py": 74, "test_gateway_attacks.py": 55, "test_lifecycle.py": 50,
    "test_plane_security.py": 43, "test_sessions_api.py": 31, "test_openai_realtime.py": 30,
    "test_asr_accuracy.py": 27, "test_turn_end.py": 24, "test_api_auth.py": 21,
    "test_llm_batched.py": 21, "test_shards_stack.py": 17, "test_handoff_restart.py": 12,
    "test_tts_batching.py": 11, "test_jobs.py": 9, "test_remote_llm.py": 9,
    "deterministic_stack": 9, "test_remote_speech.py": 9, "test_job_api.py": 8,
    "test_overload.py": 8, "test_asr_batching.py": 8,
}


def _group_seconds(group: str, tests: int) -> float:
    return GROUP_SECONDS.get(group.removeprefix("tests/"), 0.15 * tests)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from collections import OrderedDict

    from xdist.scheduler import LoadScopeScheduling

    class ByStack(LoadScopeScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return _group_of_test(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            if not self.ordered:  # (the queue is complete by the first assignment)
                self.workqueue = OrderedDict(sorted(
                    self.workqueue.items(), key=lambda unit: -_group_seconds(unit[0], len(unit[1]))))
                self.ordered = True
            super()._assign_work_unit(node)

    return ByStack(config, log)
