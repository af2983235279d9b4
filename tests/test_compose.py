"""The compose stack, built and run for real: image, health, a voice turn, a worker killed.

Runs wherever a Docker engine answers `docker info` (`make setup` installs and starts one where the
machine allows: scripts/setup-docker.sh); elsewhere it skips, and the skip reason (printed by
`-ra`) says why, including what the setup's Docker step ran into. `INZWA_COMPOSE_TEST=0` opts
out; `INZWA_COMPOSE_TEST=1` makes a missing engine a failure instead of a skip (for a CI that must
run it). The image is built offline by scripts/build-image.sh (a debootstrap base and a host
wheelhouse, cached between runs; the image itself is skipped when a tag for the same inputs
exists); the models come from this host's model cache, copied once world-readable for the
container's non-root user. Every wait is bounded, a failure carries the services' logs, and the
stack is taken down (`down -v`) whatever happens.

The checks that need no engine (compose files valid, .env.example complete) always run where
`docker-compose` is installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from common.settings import Settings, get_settings
from deploy import cli
from deploy.certs import CertFiles, make_certificate
from deploy.compose import probe as fast
from deploy.compose.envfile import missing, render
from deploy.compose.process import advertise, probe, serve, target
from gateway.client import Talker, TalkResult, load_clip
from tests.stack import free_port

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
# A cold image build (debootstrap base, wheelhouse, image) on 2 busy cores; warm it is seconds.
BUILD_TIMEOUT_S = 1800
# pytest-timeout counts the module fixture's setup (the build) in the first test that uses it.
STACK_TEST_TIMEOUT_S = BUILD_TIMEOUT_S + 900


def compose_command() -> list[str] | None:
    """The Compose v2 plugin where available, Debian's docker-compose (v1) otherwise."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def setup_status() -> str:
    """What `make setup`'s Docker step (scripts/setup-docker.sh) last reported."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    path = Path(os.environ.get("INZWA_DOCKER_STATUS", cache / "inzwa" / "docker-setup.txt"))
    try:
        return f"setup said: {path.read_text().strip()}"
    except OSError:
        return f"no {path}: scripts/setup-docker.sh (make setup) has not run"


def engine_problem() -> str | None:
    """Why the stack cannot run here, or None."""
    if compose_command() is None:
        return f"no `docker compose` or `docker-compose` here ({setup_status()})"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return f"`docker info` did not answer within 30 s ({setup_status()})"
    if info.returncode != 0:
        return f"no usable Docker engine: {info.stderr.strip()[-200:]} ({setup_status()})"
    if not shutil.which("debootstrap"):
        base = subprocess.run(["docker", "image", "inspect", "inzwa-base:latest"], capture_output=True)
        if base.returncode != 0:
            return "debootstrap is needed to build the offline base image (apt-get install debootstrap)"
    if not any(p.is_dir() for p in get_settings().models_dir.glob("*")):
        return f"no models in {get_settings().models_dir} (make models)"
    return None


def require_engine() -> None:
    """Skip (or, with INZWA_COMPOSE_TEST=1, fail) with the reason the stack cannot run."""
    wanted = os.environ.get("INZWA_COMPOSE_TEST", "")
    if wanted == "0":
        pytest.skip("INZWA_COMPOSE_TEST=0: the compose stack test is opted out")
    problem = engine_problem()
    if problem and wanted == "1":
        pytest.fail(f"INZWA_COMPOSE_TEST=1 but the stack cannot run: {problem}")
    if problem:
        pytest.skip(problem)


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


class _ReadyzServer(ThreadingHTTPServer):
    status = 200  # what a stand-in gateway's /readyz answers; the test sets it


class _Readyz(BaseHTTPRequestHandler):
    server: _ReadyzServer

    def do_GET(self) -> None:
        self.send_response(self.server.status if self.path == "/readyz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@contextmanager
def readyz_server(tls: CertFiles | None = None) -> Iterator[_ReadyzServer]:
    server = _ReadyzServer(("127.0.0.1", 0), _Readyz)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert, tls.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("INZWA_RUN_DIR", str(tmp_path))
    return tmp_path


def test_fast_probe_follows_the_gateway_readyz(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The recorded gateway is healthy exactly while its /readyz answers 200."""
    with readyz_server() as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/readyz"
        fast.record(run_dir, "gateway", url)
        assert fast.health("gateway") == 0
        assert capsys.readouterr().out == "healthy: gateway /readyz\n"
        server.status = 503
        assert fast.health("gateway") == 1
        assert capsys.readouterr().out == "unhealthy: gateway /readyz\n"
        fast.record(run_dir, "gateway", url.replace("/readyz", "/elsewhere"))
        assert fast.health("gateway") == 1  # a 404 is no readiness either
    fast.record(run_dir, "gateway", url)
    assert fast.health("gateway") == 1  # nothing listens any more


def test_fast_probe_reads_a_gateway_serving_https(run_dir: Path) -> None:
    """A gateway with its own (self-signed) certificate: the probe speaks TLS to it."""
    with readyz_server(make_certificate(run_dir)) as server:
        address = f"127.0.0.1:{server.server_address[1]}"
        fast.record(run_dir, "gateway", f"https://{address}/readyz")
        assert fast.health("gateway") == 0
        fast.record(run_dir, "gateway", f"http://{address}/readyz")
        assert fast.health("gateway") == 1  # plain HTTP gets no status line from a TLS server


def test_fast_probe_follows_the_plane_socket(run_dir: Path) -> None:
    """A recorded worker (tcp) or orchestrator (ipc) is healthy exactly while its socket accepts;
    without PROGRAM the probe takes the one `inzwa serve` recorded."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        fast.record(run_dir, "llm_worker", f"tcp://0.0.0.0:{listener.getsockname()[1]}")
        (run_dir / "program").write_text("llm_worker")
        assert fast.health() == 1  # bound, not yet listening
        listener.listen()
        assert fast.health() == 0
    assert fast.health("llm_worker") == 1
    path = run_dir / "ingress.sock"
    fast.record(run_dir, "orchestrator", f"ipc://{path}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        assert fast.health("orchestrator") == 0
    assert fast.health("orchestrator") == 1  # the file is left, nobody accepts


def test_probe_falls_back_to_the_settings_without_a_record(
        run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """No record (or a run dir only the settings know): `inzwa health` resolves the target from
    the settings, as before there were records."""
    assert fast.health("llm_worker") is None
    monkeypatch.setenv("INZWA_ZMQ_TRANSPORT", "tcp")
    monkeypatch.setenv("INZWA_ZMQ_BIND_HOST", "0.0.0.0")
    get_settings.cache_clear()
    try:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            monkeypatch.setenv("INZWA_LLM_WORK_ENDPOINT", f"tcp://llm_worker:{port}")
            assert cli.main(["health", "llm_worker"]) == 0
        assert capsys.readouterr().out == f"healthy: llm_worker socket tcp://0.0.0.0:{port}\n"
        assert cli.main(["health", "llm_worker"]) == 1
        assert cli.main(["health"]) == 1  # nothing served here
        assert "no program started here" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
    monkeypatch.delenv("INZWA_RUN_DIR")
    monkeypatch.chdir(run_dir)
    assert fast.run_dir() == fast.DEFAULT_RUN_DIR == str(Settings(_env_file=None).run_dir)  # type: ignore[call-arg]
    (run_dir / ".env").write_text("INZWA_RUN_DIR=/elsewhere\n")
    assert fast.run_dir() is None


HEAVY = ("pydantic", "pydantic_settings", "fastapi", "numpy", "asyncio", "urllib.request", "common.settings")


def test_serve_records_what_the_probe_checks_and_the_probe_stays_light(
        run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`inzwa serve` records the target the settings resolve; `inzwa health` in a fresh
    interpreter then probes it without importing pydantic, asyncio or urllib."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        for unwanted in ("INZWA_METRICS_PORT", "INZWA_ADVERTISE_HOST", "INZWA_INSTANCE"):
            monkeypatch.delenv(unwanted, raising=False)  # no metrics server here, no address change
        monkeypatch.setenv("INZWA_ZMQ_TRANSPORT", "tcp")
        monkeypatch.setenv("INZWA_TTS_WORK_ENDPOINT", f"tcp://127.0.0.1:{listener.getsockname()[1]}")
        # The program itself is not what is tested: serve() records, then runs nothing.
        monkeypatch.setattr("deploy.compose.process.runpy.run_module", lambda *_, **__: None)
        monkeypatch.setattr(sys, "argv", list(sys.argv))  # serve sets it for the program
        get_settings.cache_clear()
        try:
            serve("tts_worker")
            expected = target(get_settings(), "tts_worker")
        finally:
            get_settings.cache_clear()
        assert (run_dir / "tts_worker.probe").read_text() == expected
        code = ("import sys; from deploy.cli import main; status = main(['health']); "
                f"print(status, [m for m in {HEAVY!r} if m in sys.modules])")
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
    assert done.stdout.splitlines() == [f"healthy: tts_worker socket {expected}", "0 []"], done.stderr


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
        # By the labels Compose puts on its containers, with the docker CLI: `docker-compose ps`
        # (v1, Python) costs ~0.5 CPU-s a call, and the health wait polls every service.
        labels = [f"label=com.docker.compose.{key}" for key in
                  (f"project={self.env['COMPOSE_PROJECT_NAME']}", f"service={service}")]
        ids = run(["docker", "ps", "-a", "--no-trunc", "--format", "{{.ID}}",
                   *(arg for label in labels for arg in ("--filter", label))], timeout=60).split()
        assert len(ids) >= index, f"no container {index} of {service}\n{self.logs((service,))}"
        return sorted(ids)[index - 1]

    def inspect(self, container: str, template: str) -> str:
        return run(["docker", "inspect", "-f", template, container], timeout=60).strip()

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
        states: dict[str, str] = {}
        while time.monotonic() - started < HEALTH_TIMEOUT_S:
            states = {s: self.inspect(self.container(s), "{{.State.Health.Status}}") for s in services}
            if all(v == "healthy" for v in states.values()) and self.ready().get("ready"):
                return time.monotonic() - started
            time.sleep(2)
        sick = tuple(s for s, v in states.items() if v != "healthy") or ("gateway",)
        raise AssertionError(f"not healthy after {HEALTH_TIMEOUT_S} s: {states}, /readyz {self.ready()}"
                             f"\n{self.logs(sick)}")

    def logs(self, services: tuple[str, ...] = (), tail: int = 40) -> str:
        """The containers' states, the named services' health probes and their last log lines
        (all services' when none are named): what CI, where nobody can look, needs on a failure."""
        def out(*args: str) -> str:
            try:
                done = subprocess.run(args, cwd=ROOT, env=self.env, capture_output=True, text=True,
                                      timeout=60)
                return done.stdout + done.stderr
            except subprocess.TimeoutExpired:
                return f"({' '.join(args[:3])} timed out)"
        parts = [out(*self.command, "ps", "-a")]
        for service in services:
            for cid in out(*self.command, "ps", "-aq", service).split():
                parts.append(f"--- {service} {cid[:12]} state: "
                             + out("docker", "inspect", "-f", "{{json .State}}", cid)[-1500:])
        parts.append(out(*self.command, "logs", "--no-color", "--tail", str(tail), *services)[-8000:])
        return "\n".join(parts)

    @contextmanager
    def explained(self, *services: str) -> Iterator[None]:
        """Any failure inside carries the stack's state and the services' logs."""
        try:
            yield
        except Exception as error:
            raise AssertionError(f"{error}\n=== compose state and logs ===\n{self.logs(services)}") from error


def _readable_models(cache: Path, settings: Settings) -> Path:
    """The host's models, copied once so the container's non-root user can read them."""
    target = cache / "models"
    for source in sorted(p for p in settings.models_dir.iterdir() if p.is_dir() and p.name != ".wheels"):
        if not (target / source.name / ".complete").exists():
            shutil.copytree(source, target / source.name, dirs_exist_ok=True)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def _leftovers(project: str) -> dict[str, list[str]]:
    return {kind: run(["docker", kind, "ls", "-aq" if kind == "container" else "-q", "--filter",
                       f"label=com.docker.compose.project={project}"], timeout=60).split()
            for kind in ("container", "volume", "network")}


def _remove(left: dict[str, list[str]]) -> None:
    """Force-removes what a compose project left (a failed `down`, a killed earlier run)."""
    for kind, ids in left.items():
        if ids:
            flag = ["-f"] if kind != "network" else []
            subprocess.run(["docker", kind, "rm", *flag, *ids], capture_output=True, timeout=120)


def _sweep_dead_runs() -> None:
    """Stacks of earlier test runs whose pytest died (SIGKILL, a CI timeout) keep running under
    `restart: unless-stopped` and eat the CPU: remove those whose pid is gone."""
    labels = run(["docker", "ps", "-a", "--format", '{{.Label "com.docker.compose.project"}}'], timeout=60)
    for project in set(labels.split()):
        pid = project.removeprefix("inzwatest")
        if project.startswith("inzwatest") and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _remove(_leftovers(project))


def _build_cache() -> Path:
    default = "/var/cache/inzwa-build" if os.access("/var/cache", os.W_OK) else "~/.cache/inzwa-build"
    cache = Path(os.environ.get("INZWA_BUILD_CACHE", default)).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def _stack_env(project: str, port: int, cache: Path, env_file: Path) -> dict[str, str]:
    return {**os.environ, "COMPOSE_PROJECT_NAME": project, "INZWA_IMAGE": f"inzwa:{project}",
            "INZWA_API_KEYS": API_KEY, "INZWA_ADMIN_API_KEYS": ADMIN_KEY,
            "INZWA_REDIS_IMAGE": "inzwa-base:latest", "INZWA_PUBLISH": f"127.0.0.1:{port}",
            "INZWA_MODELS_MOUNT": str(_readable_models(cache, get_settings())),
            "INZWA_ENV_FILE": str(env_file), "INZWA_BUILD_CACHE": str(cache)}


def _take_down(stack: ComposeStack, project: str) -> None:
    """`down -v`, then whatever it left force-removed; the test fails if anything was left."""
    down = subprocess.run([*stack.command, "down", "-v", "--remove-orphans", "--timeout", "20"],
                          cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=300)
    print(f"compose timings: {stack.timings}")
    left = _leftovers(project)
    _remove(left)
    subprocess.run(["docker", "image", "rm", stack.env["INZWA_IMAGE"]], capture_output=True,
                   timeout=120)  # the tag only: the image stays under its inzwa:ctx-KEY tag
    assert down.returncode == 0, f"compose down failed: {down.stderr[-2000:]}"
    assert left == {"container": [], "volume": [], "network": []}, f"left behind: {left}"


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    require_engine()
    command = compose_command()
    assert command is not None
    _sweep_dead_runs()
    cache = _build_cache()
    env_file = tmp_path_factory.mktemp("compose") / "inzwa.env"
    # Longer replies, so the kill lands while the LLM is still generating.
    env_file.write_text("INZWA_LLM_MAX_NEW_TOKENS=160\nINZWA_LOG_LEVEL=INFO\n")
    project = f"inzwatest{os.getpid()}"
    port = free_port()
    stack = ComposeStack(command, _stack_env(project, port, cache, env_file), port)
    started = time.monotonic()
    print(run(["bash", "scripts/build-image.sh"], stack.env, timeout=BUILD_TIMEOUT_S))
    stack.timings["build_s"] = time.monotonic() - started
    try:
        started = time.monotonic()
        with stack.explained():
            stack.compose("up", "-d", "--no-build")
        stack.wait_healthy()
        stack.timings["up_to_healthy_s"] = time.monotonic() - started
        yield stack
    finally:
        _take_down(stack, project)


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
@pytest.mark.timeout(STACK_TEST_TIMEOUT_S)
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
@pytest.mark.timeout(STACK_TEST_TIMEOUT_S)
def test_compose_stack_turns_survives_a_killed_llm_and_serves_metrics(
    compose_stack: ComposeStack, fixtures_dir: Path
) -> None:
    with compose_stack.explained("gateway", "orchestrator", "llm_worker"):
        _turn_kill_and_metrics(compose_stack, fixtures_dir)


def _turn_kill_and_metrics(stack: ComposeStack, fixtures_dir: Path) -> None:
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
@pytest.mark.timeout(STACK_TEST_TIMEOUT_S)
def test_compose_scales_a_worker(compose_stack: ComposeStack, fixtures_dir: Path) -> None:
    with compose_stack.explained("gateway", "orchestrator", "llm_worker"):
        _scale_llm_worker(compose_stack, fixtures_dir)


def _scale_llm_worker(stack: ComposeStack, fixtures_dir: Path) -> None:
    stack.compose("up", "-d", "--no-build", "--no-recreate", "--scale", "llm_worker=2")
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline and stack.ready().get("workers", {}).get("llm") != 2:
        time.sleep(2)
    assert stack.ready().get("workers", {}).get("llm") == 2, stack.ready()
    result = voice_turn(stack, fixtures_dir / "q_en_weather.wav")
    assert result.completed and not result.errors, result.summary()
    stack.compose("up", "-d", "--no-build", "--no-recreate", "--scale", "llm_worker=1")
