"""The compose stack, built and run for real: image, health, a voice turn, a worker killed.

Needs a Docker engine and an explicit opt-in (`INZWA_COMPOSE_TEST=1`): the image build and the
stack take minutes, so a plain `make test` skips with the reason printed (`-ra`). The image is
built offline by scripts/build-image.sh (a debootstrap base and a host wheelhouse, both cached
between runs); the models come from this host's model cache, copied once world-readable for the
container's non-root user.

The checks that need no engine (compose files valid, .env.example complete) always run where
`docker-compose` is installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from common.settings import Settings, get_settings
from deploy.compose.envfile import missing, render
from deploy.compose.process import advertise, probe
from gateway.client import Talker, TalkResult, load_clip

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "compose-test-key"
ADMIN_KEY = "compose-test-admin-key"
SERVICES = ("orchestrator", "asr_worker", "llm_worker", "tts_worker", "gateway")
# A sample each service records itself, nonzero after a turn (the gateway's multiprocess view
# cannot see other containers). The ASR and LLM workers record no product metric of their own
# on a good turn; their process metrics (start time, CPU) prove the scrape reached them.
RECORDED = {
    "orchestrator": "inzwa_llm_ttfw_ms_count",
    "tts_worker": "inzwa_tts_rtf_count",
    "gateway": "inzwa_v2v_ms_count",
}
HEALTH_TIMEOUT_S = 300.0


def compose_command() -> list[str] | None:
    """The Compose v2 plugin where available, Debian's docker-compose (v1) otherwise."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def engine_problem() -> str | None:
    """Why the stack cannot run here, or None."""
    if os.environ.get("INZWA_COMPOSE_TEST") != "1":
        return "compose stack test is opt-in (minutes): set INZWA_COMPOSE_TEST=1 with a Docker engine"
    if compose_command() is None:
        return "no docker compose / docker-compose here"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        return f"no usable Docker engine: {info.stderr.strip()[:200]}"
    if not shutil.which("debootstrap"):
        return "debootstrap is needed to build the offline base image"
    return None


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> str:
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


# --- no engine needed ----------------------------------------------------------------------------


def test_env_example_names_every_setting() -> None:
    # A new setting fails this until the file is regenerated (comments may drift; names may not).
    text = (ROOT / ".env.example").read_text()
    assert missing(text) == [], "regenerate: python -m deploy.compose.envfile > .env.example"
    assert render().startswith(text.split("\n# ---")[0])  # the generated file, not a hand-made one


@pytest.mark.skipif(compose_command() is None, reason="no docker compose / docker-compose here")
@pytest.mark.parametrize("files", [["docker-compose.yml"],
                                   ["docker-compose.yml", "deploy/compose/gpu.yml"]])
def test_compose_files_are_valid(files: list[str]) -> None:
    command = compose_command()
    assert command is not None
    env = {**os.environ, "INZWA_API_KEYS": API_KEY}
    args = [*command, *(a for f in files for a in ("-f", f)), "config"]
    config = run(args, env)
    assert "inzwa serve llm_worker" in config or "- llm_worker" in config
    if "deploy/compose/gpu.yml" in files:
        assert "driver: nvidia" in config and "INZWA_TTS_DEVICE: cuda" in config
    # Without API keys the gateway would listen beyond loopback with no credentials: refused.
    env.pop("INZWA_API_KEYS")
    refused = subprocess.run([*command, "config"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "INZWA_API_KEYS" in refused.stdout + refused.stderr


def test_health_probe_follows_the_plane_socket(tmp_path: Path) -> None:
    """`inzwa health`: unhealthy before `inzwa serve` recorded a program, and a worker is healthy
    exactly while something accepts on its work port."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        settings = Settings(_env_file=None, zmq_transport="tcp", run_dir=tmp_path,  # type: ignore[call-arg]
                            llm_work_endpoint=f"tcp://llm_worker:{port}", zmq_bind_host="0.0.0.0")
        assert probe(settings, "llm_worker")[0] is False  # bound, not yet listening
        listener.listen()
        assert probe(settings, "llm_worker") == (True, f"llm_worker socket tcp://0.0.0.0:{port}")
    assert probe(settings, "llm_worker")[0] is False  # closed: a dead worker
    assert probe(settings, "nonsense")[0] is False


def test_worker_announces_its_own_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INZWA_ZMQ_TRANSPORT", "tcp")
    monkeypatch.setenv("INZWA_LLM_WORK_ENDPOINT", "tcp://llm_worker:5570")
    monkeypatch.setenv("INZWA_ADVERTISE_HOST", "10.1.2.3")
    get_settings.cache_clear()
    try:
        assert advertise(get_settings(), "llm") == "tcp://10.1.2.3:5570"
        assert get_settings().work_endpoint("llm") == "tcp://10.1.2.3:5570"
        monkeypatch.setenv("INZWA_ADVERTISE_HOST", "auto")
        get_settings.cache_clear()
        address = socket.gethostbyname(socket.gethostname())
        assert advertise(get_settings(), "llm") == f"tcp://{address}:5570"
    finally:
        get_settings.cache_clear()


# --- the stack ---------------------------------------------------------------------------------


@dataclass
class ComposeStack:
    command: list[str]
    env: dict[str, str]
    port: int
    timings: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 600) -> str:
        return run([*self.command, *args], self.env, timeout)

    def container(self, service: str, index: int = 1) -> str:
        ids = self.compose("ps", "-q", service).split()
        assert len(ids) >= index, f"no container {index} of {service}"
        return sorted(ids)[index - 1]

    def inspect(self, container: str, template: str) -> str:
        return run(["docker", "inspect", "-f", template, container]).strip()

    def ip(self, container: str) -> str:
        return self.inspect(container, "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}").split()[0]

    def ready(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as r:
                return dict(json.loads(r.read()))
        except (OSError, ValueError):
            return {}

    def wait_healthy(self, services: tuple[str, ...] = SERVICES) -> float:
        started = time.monotonic()
        while time.monotonic() - started < HEALTH_TIMEOUT_S:
            states = {s: self.inspect(self.container(s), "{{.State.Health.Status}}") for s in services}
            if all(v == "healthy" for v in states.values()) and self.ready().get("ready"):
                return time.monotonic() - started
            time.sleep(2)
        raise AssertionError(f"not healthy after {HEALTH_TIMEOUT_S} s: {states}\n{self.logs()}")

    def logs(self) -> str:
        done = subprocess.run([*self.command, "logs", "--tail", "15"], cwd=ROOT, env=self.env,
                              capture_output=True, text=True)
        return done.stdout[-6000:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _readable_models(cache: Path, settings: Settings) -> Path:
    """The host's models, copied once so the container's non-root user can read them."""
    target = cache / "models"
    for source in sorted(p for p in settings.models_dir.iterdir() if p.is_dir() and p.name != ".wheels"):
        if not (target / source.name / ".complete").exists():
            shutil.copytree(source, target / source.name, dirs_exist_ok=True)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    problem = engine_problem()
    if problem:
        pytest.skip(problem)
    command = compose_command()
    assert command is not None
    default_cache = "/var/cache/inzwa-build" if os.access("/var/cache", os.W_OK) else "~/.cache/inzwa-build"
    cache = Path(os.environ.get("INZWA_BUILD_CACHE", default_cache)).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    env_file = tmp_path_factory.mktemp("compose") / "inzwa.env"
    # Longer replies, so the kill lands while the LLM is still generating.
    env_file.write_text("INZWA_LLM_MAX_NEW_TOKENS=160\nINZWA_LOG_LEVEL=INFO\n")
    project = f"inzwatest{os.getpid()}"
    port = _free_port()
    env = {**os.environ, "COMPOSE_PROJECT_NAME": project, "INZWA_IMAGE": f"inzwa:{project}",
           "INZWA_API_KEYS": API_KEY, "INZWA_ADMIN_API_KEYS": ADMIN_KEY,
           "INZWA_REDIS_IMAGE": "inzwa-base:latest", "INZWA_PUBLISH": f"127.0.0.1:{port}",
           "INZWA_MODELS_MOUNT": str(_readable_models(cache, get_settings())),
           "INZWA_ENV_FILE": str(env_file), "INZWA_BUILD_CACHE": str(cache)}
    stack = ComposeStack(command, env, port)
    started = time.monotonic()
    build = run(["bash", "scripts/build-image.sh"], env, timeout=1800)
    stack.timings["build_s"] = time.monotonic() - started
    print(build)
    try:
        started = time.monotonic()
        stack.compose("up", "-d", "--no-build")
        stack.wait_healthy()
        stack.timings["up_to_healthy_s"] = time.monotonic() - started
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "20")
        print(f"compose timings: {stack.timings}")
        left = {kind: run(["docker", kind, "ls", "-aq" if kind == "container" else "-q", "--filter",
                           f"label=com.docker.compose.project={project}"]).split()
                for kind in ("container", "volume", "network")}
        run(["docker", "image", "rm", env["INZWA_IMAGE"]])  # the tag only: layers stay cached
        assert left == {"container": [], "volume": [], "network": []}, f"left behind: {left}"


class AuthTalker(Talker):
    """gateway.client's Talker with the API key, and a hook on the first reply token."""

    def __init__(self, pcm: bytes, on_first_token: Any = None) -> None:
        super().__init__(pcm)
        self.on_first_token = on_first_token
        self.tasks: list[asyncio.Task[Any]] = []

    async def run(self, url: str, *, language: str = "", timeout_s: float = 60.0,
                  headers: dict[str, str] | None = None) -> TalkResult:
        """Talker.run with the API key; returns once the first-token hook has finished too."""
        result = await super().run(url, language=language, timeout_s=timeout_s,
                                   headers={"Authorization": f"Bearer {API_KEY}", **(headers or {})})
        await asyncio.gather(*self.tasks)
        return result

    def _on_event(self, event: dict[str, Any]) -> bool:
        if event.get("type") == "llm.partial" and self.on_first_token and not self.tasks:
            self.tasks.append(asyncio.create_task(asyncio.to_thread(self.on_first_token)))
        return super()._on_event(event)


def voice_turn(stack: ComposeStack, clip: Path, on_first_token: Any = None) -> TalkResult:
    talker = AuthTalker(load_clip(clip), on_first_token)
    return asyncio.run(talker.run(f"ws://127.0.0.1:{stack.port}/ws/audio", timeout_s=180))


def scrape(stack: ComposeStack, container: str) -> str:
    with urllib.request.urlopen(f"http://{stack.ip(container)}:9100/metrics", timeout=10) as r:
        return str(r.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return 0.0


@pytest.mark.e2e
def test_image_is_non_root_without_compilers(compose_stack: ComposeStack) -> None:
    image = compose_stack.env["INZWA_IMAGE"]
    probe = run(["docker", "run", "--rm", "--entrypoint", "sh", image, "-c",
                 "id -u; for c in gcc cc g++ cmake make; do command -v $c || true; done"])
    assert probe.split() == ["10001"], f"runs as root or carries compilers: {probe!r}"
    config = json.loads(run(["docker", "image", "inspect", image]))[0]["Config"]
    assert config["Healthcheck"]["Test"] == ["CMD", "inzwa", "health"]
    size_mb = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", image])) / 1e6
    print(f"image {image}: {size_mb:.0f} MB; timings {compose_stack.timings}")


@pytest.mark.e2e
def test_compose_stack_turns_survives_a_killed_llm_and_serves_metrics(
    compose_stack: ComposeStack, fixtures_dir: Path
) -> None:
    stack = compose_stack
    # 1. A voice turn through the published port.
    result = voice_turn(stack, fixtures_dir / "q_en_capital.wav")
    assert result.completed and not result.errors, result.summary()
    assert "capital" in result.transcript.lower() and result.reply_text and len(result.reply_audio) > 16000

    # The conversation store is on the orchestrator's data volume, not in its tmpfs.
    run(["docker", "exec", stack.container("orchestrator"), "test", "-s", "/data/inzwa.db"])

    # 2. The LLM container dies mid-reply (its process killed, as a crash or the OOM killer
    # would: `docker kill` counts as a manual stop and no restart policy restarts it).
    llm = stack.container("llm_worker")
    restarts = int(stack.inspect(llm, "{{.RestartCount}}"))
    pid = int(stack.inspect(llm, "{{.State.Pid}}"))
    first_start = sample(scrape(stack, llm), "process_start_time_seconds")
    killed_at: list[float] = []

    def kill() -> None:
        os.kill(pid, 9)
        killed_at.append(time.monotonic())

    result = voice_turn(stack, fixtures_dir / "q_en_long.wav", on_first_token=kill)
    assert killed_at, "the reply never started"
    assert result.completed and not result.errors, result.summary()
    assert result.reply_text and len(result.reply_audio) > 16000
    orchestrator = scrape(stack, stack.container("orchestrator"))
    assert sample(orchestrator, "inzwa_replays_total", kind="llm") >= 1, "the kill missed the reply"
    assert int(stack.inspect(llm, "{{.RestartCount}}")) == restarts + 1
    stack.timings["llm_back_healthy_s"] = stack.wait_healthy(("llm_worker",))

    # 3. Every service's own metrics, scraped from its container as Prometheus would.
    for service in SERVICES:
        text = scrape(stack, stack.container(service))
        assert sample(text, "process_cpu_seconds_total") > 0, service
        if service in RECORDED:
            assert sample(text, RECORDED[service]) >= 1, f"{service}: {RECORDED[service]}"
    # The llm_worker's metrics are the restarted process's: a later start than the killed one's.
    assert sample(scrape(stack, llm), "process_start_time_seconds") > first_start > 0


@pytest.mark.e2e
def test_compose_scales_a_worker(compose_stack: ComposeStack, fixtures_dir: Path) -> None:
    stack = compose_stack
    stack.compose("up", "-d", "--no-build", "--no-recreate", "--scale", "llm_worker=2")
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline and stack.ready().get("workers", {}).get("llm") != 2:
        time.sleep(2)
    assert stack.ready().get("workers", {}).get("llm") == 2, stack.ready()
    result = voice_turn(stack, fixtures_dir / "q_en_weather.wav")
    assert result.completed and not result.errors, result.summary()
    stack.compose("up", "-d", "--no-build", "--no-recreate", "--scale", "llm_worker=1")
