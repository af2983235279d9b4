"""Settings shared by every process, read from `INZWA_*` environment variables (and `.env`).

Every process reads the same settings so that endpoints agree without a config server: the
ZeroMQ endpoints derive from one base port unless set one by one.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

GATEWAY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")  # also a file name (its ipc socket, its key)


def _default_models_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "inzwa" / "models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INZWA_", env_file=".env", extra="ignore")

    # --- general (seed fields) ---
    debug: bool = False
    log_level: str = "INFO"
    log_content: bool = False  # raw audio / transcript text in logs only when True
    cors_allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    request_timeout_s: float = 30.0
    max_text_chars: int = 2000
    max_audio_seconds: float = 30.0
    enable_webrtc: bool = False
    language: str = "en"

    # --- gateway ---
    host: str = "127.0.0.1"
    port: int = 8000
    start_timeout_s: float = 10.0
    max_frame_ms: int = 100  # largest binary audio message accepted, in ms of audio
    gateway_id: str = "gw0"
    playback_lead_ms: int = 250  # reply audio runs at most this far ahead of real time
    playback_speed: float = Field(default=1.0, ge=1.0, le=20.0)  # >1 only in tests: pacing clock
    max_upload_bytes: int = 16 * 1024 * 1024  # REST bodies (an /v1/asr upload) larger get 413
    opus_bitrate: int = Field(default=24000, ge=6000, le=128000)  # Opus out, bits per second

    # --- voice sessions (WebSocket and WebRTC) and WebRTC (session/WebRTC area) ---
    session_idle_timeout_s: float = 120.0  # a started session with no audio or message: closed
    session_audio_rate: float = 1.2  # audio accepted per wall-clock second (x real time); 0: off
    # ... plus this much at once: a client catching up after a stall (a mobile network, or this
    # gateway's own busy moment, as the WebRTC receiver) must not lose the user's speech
    session_audio_burst_s: float = Field(default=5.0, ge=0.1)
    # STUN/TURN for WebRTC: [{"urls": "stun:host:3478"}, {"urls": [...], "username", "credential"}]
    rtc_ice_servers: list[dict[str, str | list[str]]] = Field(default_factory=list)
    rtc_connect_timeout_s: float = 15.0  # a peer not connected by then is dropped (and counted)
    rtc_media_timeout_s: float = 10.0  # a connected peer whose audio stops this long: dropped
    rtc_uplink_prefetch: int = Field(default=1, ge=1, le=8)  # client audio frames held (aiortc: 4)

    # --- auth and limits (gateway) ---
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    admin_api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    jwt_secret: str = ""  # HS256; tokens carry `sub`, `exp` and optionally scope "admin"
    redis_url: str = ""  # empty: limits kept in this gateway's memory
    rate_requests_per_minute: int = 120  # per key, or per client address when anonymous
    rate_concurrent_sessions: int = 8
    rate_audio_seconds_per_day: float = 4 * 3600.0  # audio heard (WebSocket and /v1/asr)

    # --- gateway edge: body caps, server limits, hosts, proxies, JWT claims, TLS (HTTP edge area) ---
    max_json_bytes: int = Field(default=64 * 1024, ge=1024)  # JSON bodies; refused before reading
    ws_max_bytes: int = Field(default=64 * 1024, ge=4096)  # any WebSocket message (global ceiling)
    keep_alive_timeout_s: int = Field(default=5, ge=1)  # idle HTTP keep-alive connections close
    header_timeout_s: float = Field(default=10.0, gt=0)  # a request's headers must arrive by then
    limit_concurrency: int = Field(default=1000, ge=1)  # connections + tasks; above: 503
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)  # X-Forwarded-For from
    trusted_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)  # extra Host names
    max_wav_chunks: int = Field(default=64, ge=2)  # RIFF chunks walked in an upload
    jwt_audience: str = "inzwa"  # required `aud` claim
    jwt_issuer: str = "inzwa"  # required `iss` claim
    jwt_max_ttl_s: float = Field(default=24 * 3600.0, gt=0)  # exp - iat above this: refused
    tls_certfile: str = ""  # both set: the gateway serves HTTPS/WSS itself
    tls_keyfile: str = ""

    @field_validator("trusted_proxies", "trusted_hosts", mode="before")
    @classmethod
    def _split_edge_list(cls, value: object) -> object:
        if isinstance(value, str):  # comma-separated, or a JSON array
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    # --- ZeroMQ endpoints (derived from zmq_base_port unless set) ---
    zmq_host: str = "127.0.0.1"
    zmq_base_port: int = 5550
    zmq_bind_host: str = ""  # e.g. "0.0.0.0" in containers; empty: bind where peers connect
    ingress_endpoint: str = ""  # gateways PUSH -> orchestrator PULL
    control_endpoint: str = ""  # orchestrator PUB -> workers and gateways SUB
    results_endpoint: str = ""  # workers PUSH -> orchestrator PULL
    egress_endpoint: str = ""  # orchestrator PUSH -> this gateway's PULL
    asr_work_endpoint: str = ""  # each worker binds its own PULL; index added to the port
    llm_work_endpoint: str = ""
    tts_work_endpoint: str = ""
    heartbeat_interval_s: float = 1.0
    heartbeat_liveness: int = 5  # missed beats before an instance is declared dead

    # --- the ZeroMQ plane (plane area): who may talk on it, and how much ---
    # ipc (default): every socket is a file in run_dir/plane (dir 0700, sockets 0600), so only the
    # service user reaches the plane. tcp: ports from zmq_base_port (or the explicit endpoints
    # above), for several hosts, where curve_keys_dir should be set.
    zmq_transport: Literal["ipc", "tcp"] = "ipc"
    # CURVE on every socket, with a ZAP handler admitting only the public keys of this directory
    # by role (`inzwa keys` writes it): orchestrator, watchdog, worker, gateway-<gateway_id>.
    curve_keys_dir: Path | None = None
    zmq_max_message_bytes: int = 0  # larger messages drop the connection; 0: derived (see below)
    zmq_send_queue: int = 2000  # frames waiting per peer socket; past it frames are dropped
    watchdog_endpoint: str = ""  # the watchdog's own socket to the orchestrator (WorkerExited)
    # Where the orchestrator answers each gateway (tcp, several gateways): {"gw1": "tcp://..."}.
    # With ipc the convention run_dir/plane/egress-<gateway_id>.sock needs no entry.
    gateway_egress_endpoints: dict[str, str] = Field(default_factory=dict)

    # --- models ---
    models_dir: Path = Field(default_factory=_default_models_dir)
    asr_engine: str = "faster-whisper"  # a name of asr_worker/registry.py (checked there)
    asr_model: str = "whisper-base"  # a name from the model catalogue, or a local directory
    asr_compute_type: str = "int8"
    asr_threads: int = 1  # CTranslate2 decode threads: see README, "One BLAS thread per process"
    asr_beam_size: int = 1
    asr_language: str = ""  # empty: follow `language`; "auto": detect
    vad_aggressiveness: int = Field(default=2, ge=0, le=3)
    vad_silence_ms: int = 400  # trailing silence that ends a turn (see README: tuning)
    vad_min_speech_ms: int = 200  # speech shorter than this does not open a turn
    asr_partial_interval_ms: int = 300
    # Share of real time one session's partial decodes may take; the interval stretches to keep
    # under it (long utterances, a loaded machine). 0: a partial every interval, whatever it costs.
    asr_partial_budget: float = Field(default=0.5, ge=0.0, le=1.0)
    early_reply: bool = True  # start the LLM at a pause, before the end of turn is certain
    early_pause_ms: int = 100  # unvoiced ms inside speech (after webrtcvad's ~80 ms hangover): a pause
    # --- end of turn (ASR area, issue 15): at a pause, a model decides whether the turn is done
    turn_end: str = "smart-turn"  # "smart-turn" | "silence" | "llm" (asr_worker/turn_end.py)
    turn_end_model: str = "smart-turn-v3.2"  # catalogue name or a local .onnx path
    turn_end_threshold: float = Field(default=0.5, ge=0.0, le=1.0)  # P(complete) that ends the turn
    turn_end_threads: int = 1
    turn_end_languages: str = ""  # Whisper codes the model may decide for; empty: all it knows
    turn_end_wait_ms: int = 700  # silence timeout once the model said "not done" at the pause
    turn_end_text_guard: bool = True  # a transcript ending like a fragment overrules "complete"
    # --- LLM end-of-turn (issue 15, INZWA_TURN_END=llm; asr_worker/turn_end_llm.py): the GGUF's
    # P(end of the user's turn) after the transcript's words, one prefill; English only
    turn_end_llm_model: str = ""  # a GGUF catalogue name or path; empty: INZWA_LLM_MODEL
    turn_end_llm_midpoint: float = Field(default=0.05, gt=0.0, lt=1.0)  # raw P(end) read as 0.5
    asr_tail_decode: bool = True  # decode only the audio after the prefix committed at pauses
    # --- ASR batching (issue 15): decodes of several sessions that queue behind a running one go
    # in one Whisper batch (asr_worker/batching.py); a lone decode never waits. 0: off
    asr_batch_window_ms: float = Field(default=5.0, ge=0.0)  # from the first queued decode
    asr_batch_max: int = Field(default=8, ge=1)  # decodes in one batch at most

    llm_engine: str = "llama-cpp"  # a name of llm_worker/registry.py (checked there)
    llm_model: str = "smollm2-135m"
    llm_threads: int = 1  # llama.cpp threads spin: 2 on a shared 2-core box ran 100x slower
    llm_context: int = 4096
    llm_max_new_tokens: int = 80
    llm_temperature: float = 0.3
    llm_seed: int = 0
    system_prompt: str = ""  # empty: the session language pack's own prompt
    history_turns: int = 8
    asr_stall_s: float = 6.0  # speech goes on but the ASR says nothing this long: reset it
    llm_timeout_s: float = 8.0  # no token for this long: a fallback reply is spoken instead
    # --- batched llama.cpp (INZWA_LLM_ENGINE=llama-cpp-batched, issue 15): llm_concurrency
    # sequences decoded together in one context, each with its own KV stream
    llm_batch_slot_context: int = Field(default=2048, ge=256, le=32768)  # tokens per sequence

    tts_engine: str = "piper-onnx"  # a name of tts_worker/registry.py (checked there)
    tts_model: str = "piper-en-us-joe-medium"
    tts_threads: int = 1
    tts_espeak_voice: str = ""  # empty: the voice's own espeak voice
    audio_out_codec: Literal["pcm16", "opus"] = "pcm16"
    audio_out_sample_rate: int = 16000
    audio_frame_ms: int = 20

    # --- engines (engines area): remote OpenAI-compatible servers and scripted fakes ---
    # Base URLs include the API version, like the OpenAI SDK's base_url: http://gpu-box:8000/v1
    llm_remote_url: str = ""
    llm_remote_model: str = ""  # the server's model name ("" for servers that serve one model)
    llm_remote_api_key: str = ""
    llm_remote_timeout_s: float = 30.0  # connect/read timeout; a stalled stream errors out
    llm_remote_retries: int = 2  # retries of a failed request (after text went out: continued)
    llm_concurrency: int = Field(default=4, ge=1, le=256)  # requests at once (remote engines)
    asr_remote_url: str = ""
    asr_remote_model: str = "whisper-1"
    asr_remote_api_key: str = ""
    asr_remote_timeout_s: float = 30.0
    tts_remote_url: str = ""
    tts_remote_model: str = "tts-1"
    tts_remote_voice: str = "alloy"
    tts_remote_api_key: str = ""
    tts_remote_timeout_s: float = 30.0
    tts_remote_format: Literal["pcm", "wav"] = "pcm"  # pcm: 24 kHz PCM16 (OpenAI's pcm format)
    tts_remote_sample_rate: int = 24000  # of `pcm` responses (wav says its own)
    fake_asr_text: str = "what is the capital of zimbabwe"  # every utterance's transcript
    fake_llm_tokens_per_s: float = Field(default=50.0, gt=0)
    fake_llm_reply: str = ""  # empty: an echo of the user's last message, in a few sentences
    fake_tts_rtf: float = Field(default=0.05, ge=0)  # synthesis time over audio time
    fake_tts_ms_per_char: int = Field(default=60, ge=1)  # audio length per character of text

    # --- OpenAI-compatible API (OpenAI area, issue 12): gateway/openai_*.py, gateway/realtime*.py ---
    # accept OpenAI's ids (whisper-1, tts-1, gpt-realtime, alloy...) for the loaded models
    openai_aliases: bool = True
    openai_max_speech_chars: int = Field(default=4096, ge=1)  # /v1/audio/speech `input` (OpenAI's limit)

    # --- conversation store (conversations area, issue 13): orchestrator/store*.py ---
    db_url: str = ""  # empty: sqlite:///{run_dir}/inzwa.db; sqlite:///path (postgresql:// later)
    store_text: bool = True  # off: only metadata and timings are kept, never what was said
    retention_days: float = Field(default=30.0, ge=0)  # 0: kept until erased
    store_busy_timeout_s: float = Field(default=5.0, ge=0)  # wait this long for a locked database
    tts_cache_entries: int = Field(default=1000, ge=0)  # audio cache per TTS worker; 0: off
    tts_cache_bytes: int = Field(default=256 * 1024 * 1024, ge=0)  # ... and its bound in bytes
    tts_cache_ttl_s: float = Field(default=3600.0, ge=0)
    # --- TTS batching (issue 15): phrases of up to tts_batch_max sessions synthesized at once, their
    # sentences sharing one VITS run (tts_worker/batching.py); a lone sentence never waits. 1: off
    tts_batch_max: int = Field(default=1, ge=1, le=64)  # sessions at once, sentences in one run
    tts_batch_window_ms: float = Field(default=5.0, ge=0.0)  # from the first queued sentence
    # idle sessions, response cache, model LRU (conversations area, issue 13)
    session_idle_s: float = Field(default=60.0, ge=0)  # orchestrator: no audio or message -> ended; 0: off
    response_cache_entries: int = Field(default=5000, ge=0)  # chat replies at llm_temperature 0; 0: off
    response_cache_ttl_s: float = Field(default=1800.0, ge=0)
    tts_loaded_voices: int = Field(default=3, ge=1)  # voices a TTS worker keeps loaded (LRU)
    tts_voices: dict[str, str] = Field(default_factory=dict)  # a language's own voice: {"sn": "<model>"}
    # --- whole turns and the job API (jobs area, issues 13 and 14): gateway/whole_turn.py ---
    turn_job_ttl_s: float = Field(default=300.0, gt=0)  # a finished job's result is kept this long
    turn_jobs_max: int = Field(default=200, ge=1)  # jobs held per gateway, ~1 MiB of audio each

    # --- human handoff (handoff area, issue 14): orchestrator/triggers.py, orchestrator/handoff.py ---
    handoff_enabled: bool = True  # off: no trigger fires and handoff requests are refused
    handoff_explicit: bool = True  # the pack's "I want to talk to a person" patterns
    handoff_frustration: bool = True  # the frustration classifier ...
    handoff_frustration_threshold: float = Field(default=0.8, ge=0.0, le=1.0)  # ... P(frustrated) >= this
    handoff_frustration_turns: int = Field(default=2, ge=1)  # ... in this many turns in a row
    handoff_fallbacks: int = Field(default=3, ge=0)  # fallback replies in a row (LLM timeout...); 0: off
    # ASR confidence and repeats are off by default: their thresholds depend on the deployment's
    # ASR model and line quality (a scripted or noisy line repeats itself without anyone being stuck).
    handoff_low_confidence: float = Field(default=0.35, ge=0.0, le=1.0)  # a final under this is "low"
    handoff_low_confidence_turns: int = Field(default=0, ge=0)  # low finals in a row; 0: off
    handoff_repeats: int = Field(default=0, ge=0)  # the same question asked this many times; 0: off
    # The LLM tier: only when the classifier is unsure (P(frustrated) in [band, threshold)) the LLM
    # is asked, beside the reply; off by default (a small local model judges poorly, and it costs
    # an LLM slot).
    handoff_llm_judge: bool = False
    handoff_llm_band: float = Field(default=0.5, ge=0.0, le=1.0)
    handoff_timeout_s: float = Field(default=120.0, gt=0)  # no operator accepted by then: ...
    handoff_timeout_action: Literal["continue", "end"] = "continue"  # ... the assistant goes on, or ends
    operator_api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)  # WS /v1/operator

    # --- overload ladder (overload area, issue 15): orchestrator/overload.py ---
    # Load = LLM requests in flight (session turns, speculative ones included, and chat jobs) per
    # READY LLM generation slot. A level starts when the load reaches its threshold (0: that level
    # off); levels only come in this order: fewer partials, shorter replies, refusal.
    overload_partials_at: float = Field(default=2.0, ge=0)  # 1: new ASR partials off
    overload_shorter_at: float = Field(default=4.0, ge=0)  # 2: new turns get overload_reply_tokens
    overload_refuse_at: float = Field(default=8.0, ge=0)  # 3: new turns get the pack's busy line
    overload_reply_tokens: int = Field(default=32, ge=1)  # a turn's reply budget at level 2 and up
    # Down one level per overload_hold_s, once the load is under the threshold x (1 - hysteresis).
    overload_hysteresis: float = Field(default=0.25, ge=0.0, lt=1.0)
    overload_hold_s: float = Field(default=2.0, ge=0.0)

    # --- process supervision ---
    run_dir: Path = Path(".run")
    drain_timeout_s: float = 8.0  # on SIGTERM a worker finishes in-flight work this long at most
    restart_budget: int = 5  # restarts of one program within restart_window_s before giving up
    restart_window_s: float = 60.0
    restart_backoff_s: float = 0.5  # doubles with each restart in the window
    restart_backoff_max_s: float = 10.0
    instance: int = 0  # replica index of this worker process
    asr_replicas: int = 1  # read by supervisord (numprocs) through the same variables
    llm_replicas: int = 1
    tts_replicas: int = 1

    # --- containers (deployment area): docker-compose, Kubernetes; `inzwa serve` / `inzwa health` ---
    metrics_port: int = Field(default=0, ge=0, le=65535)  # >0: this process serves /metrics on it
    metrics_host: str = "127.0.0.1"  # "0.0.0.0" in a container, so Prometheus reaches it
    # The address a worker announces for its work socket, when peers cannot use the configured
    # one: "auto" is this container's own address (replicas of one compose service differ only
    # there), anything else is taken as is (a pod IP from the downward API).
    advertise_host: str = ""
    tts_device: Literal["cpu", "cuda"] = "cpu"  # cuda: onnxruntime's CUDA provider, then the CPU

    # --- shards (scaling area, issue 17): several orchestrators, each with its own workers ---
    # Empty: one shard, the ingress/control endpoints above. Otherwise a JSON list, one entry per
    # orchestrator: [{"name": "s0", "ingress": "tcp://orch-0:5550", "control": "tcp://orch-0:5551"}]
    # A session's shard is the rendezvous hash of its id over the names (gateway/shards.py): keep
    # a shard's name when its address changes, or its sessions move.
    shards: list[dict[str, str]] = Field(default_factory=list)

    @field_validator("shards")
    @classmethod
    def _shards(cls, value: list[dict[str, str]]) -> list[dict[str, str]]:
        for shard in value:
            if not {"name", "ingress", "control"} <= shard.keys() or not all(shard.values()):
                raise ValueError("shards: each entry needs a name, an ingress and a control endpoint")
        if len({shard["name"] for shard in value}) != len(value):
            raise ValueError("shards: two entries have the same name")
        return value

    @property
    def tts_onnx_providers(self) -> list[str]:
        """onnxruntime execution providers for the TTS engine, in order of preference."""
        if self.tts_device == "cuda":
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    @field_validator("curve_keys_dir", mode="before")
    @classmethod
    def _no_keys_dir(cls, value: object) -> object:
        return None if value == "" else value  # INZWA_CURVE_KEYS_DIR= means off, not "."

    @field_validator("gateway_id")
    @classmethod
    def _gateway_id(cls, value: str) -> str:
        if not GATEWAY_ID.fullmatch(value):
            raise ValueError("gateway_id: 1-32 letters, digits, '_' or '-'")
        return value

    @field_validator("cors_allowed_origins", "api_keys", "admin_api_keys", "operator_api_keys",
                     mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):  # a comma-separated list, or a JSON array
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    def _tcp(self, offset: int) -> str:
        return f"tcp://{self.zmq_host}:{self.zmq_base_port + offset}"

    @property
    def plane_dir(self) -> Path:
        """The directory of the ipc sockets (created 0700 by whoever binds first)."""
        return self.run_dir.resolve() / "plane"

    def _endpoint(self, name: str, offset: int) -> str:
        """ipc: a socket file named `name`; tcp: the base port plus `offset`."""
        if self.zmq_transport == "tcp":
            return self._tcp(offset)
        return f"ipc://{self.plane_dir / name}.sock"

    @property
    def max_message_bytes(self) -> int:
        """ZMQ_MAXMSGSIZE: the largest legitimate frame is a replay SessionStart (or a REST
        transcription) carrying max_audio_seconds of PCM16 at 16 kHz; headroom for the rest."""
        derived = int(self.max_audio_seconds * 32000) + 64000 + 512 * 1024
        return self.zmq_max_message_bytes or derived

    @property
    def watchdog(self) -> str:
        return self.watchdog_endpoint or self._endpoint("watchdog", 4)

    def gateway_egress(self, gateway_id: str) -> str | None:
        """Where the orchestrator answers `gateway_id`; None for a gateway it does not know."""
        if gateway_id in self.gateway_egress_endpoints:
            return self.gateway_egress_endpoints[gateway_id]
        if gateway_id == self.gateway_id:
            return self.egress
        if self.zmq_transport == "ipc" and GATEWAY_ID.fullmatch(gateway_id):
            return f"ipc://{self.plane_dir / f'egress-{gateway_id}'}.sock"
        return None

    def replicas(self, kind: str) -> int:
        return int(getattr(self, f"{kind}_replicas"))

    def bindable(self, endpoint: str) -> str:
        """The address to bind for an endpoint peers connect to (differs in containers)."""
        if not self.zmq_bind_host or not endpoint.startswith("tcp://"):
            return endpoint
        port = endpoint.rpartition(":")[2]
        return f"tcp://{self.zmq_bind_host}:{port}"

    @property
    def ingress(self) -> str:
        return self.ingress_endpoint or self._endpoint("ingress", 0)

    @property
    def control(self) -> str:
        return self.control_endpoint or self._endpoint("control", 1)

    @property
    def results(self) -> str:
        return self.results_endpoint or self._endpoint("results", 2)

    @property
    def egress(self) -> str:
        return self.egress_endpoint or self._endpoint(f"egress-{self.gateway_id}", 3)

    def work_endpoint(self, kind: str, instance: int | None = None) -> str:
        """The endpoint a worker instance binds its work PULL socket on."""
        index = self.instance if instance is None else instance
        explicit = getattr(self, f"{kind}_work_endpoint")
        if explicit:
            base, _, port = explicit.rpartition(":")
            return f"{base}:{int(port) + index}"
        offsets = {"asr": 10, "llm": 20, "tts": 30}
        return self._endpoint(f"{kind}-{index}", offsets[kind] + index)

    @property
    def effective_asr_language(self) -> str:
        return self.asr_language or self.language


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
