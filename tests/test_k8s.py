"""The Kubernetes manifests (deploy/k8s) render and validate against the Kubernetes schemas.

Rendering is kustomize's, for the subset these files use (a resource list, strategic-merge
patches): no cluster and no kustomize binary needed. The schemas come with the
`kubernetes-validate` package (strict: unknown fields are errors).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (the dev extra has it)"
)

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"
WORKLOADS = ("Deployment", "StatefulSet")
Doc = dict[str, Any]


def _merge_list(base: list[Any], patch: list[Any]) -> list[Any]:
    """Lists of named items (containers, env) merge by name; other lists are replaced."""
    if not all(isinstance(i, dict) and "name" in i for i in [*base, *patch]):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(base)
    for item in patch:
        same = next((m for m in merged if m["name"] == item["name"]), None)
        if same is None:
            merged.append(copy.deepcopy(item))
        else:
            merged[merged.index(same)] = strategic_merge(same, item)
    return merged


def strategic_merge(base: Doc, patch: Doc) -> Doc:
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = strategic_merge(merged[key], value)
        elif isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = _merge_list(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _key(doc: Doc) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


def render(directory: Path) -> list[Doc]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "patches"}, \
        "a transformer this renderer does not apply"
    docs: list[Doc] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            docs.extend(render(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for patch in kustomization.get("patches", []):
        for change in yaml.safe_load_all((directory / patch["path"]).read_text()):
            targets = [i for i, d in enumerate(docs) if _key(d) == _key(change)]
            assert len(targets) == 1, f"patch target {_key(change)} not found once"
            docs[targets[0]] = strategic_merge(docs[targets[0]], change)
    return docs


def containers(doc: Doc) -> list[Doc]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def env_of(container: Doc) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


@pytest.mark.parametrize("overlay", ["base", "gpu", "shards"])
def test_manifests_validate_against_kubernetes_schemas(overlay: str) -> None:
    docs = render(K8S / overlay)
    assert len({_key(d) for d in docs}) == len(docs), "duplicate resources"
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{_key(doc)}: {exc.message} at {list(exc.path)}")


def test_base_lists_every_manifest_file() -> None:
    listed = set(yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_workloads_are_probed_limited_non_root_and_budgeted() -> None:
    docs = render(K8S / "base")
    budgets = [d["spec"]["selector"]["matchLabels"] for d in docs if d["kind"] == "PodDisruptionBudget"]
    services = [d["spec"]["selector"] for d in docs if d["kind"] == "Service"]
    for doc in (d for d in docs if d["kind"] in WORKLOADS):
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
        if doc["metadata"]["name"] != "redis":  # holds nothing that outlives a restart
            assert any(b.items() <= labels.items() for b in budgets), f"{_key(doc)} has no PDB"
        assert any(s.items() <= labels.items() for s in services), f"{_key(doc)} has no Service"
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in containers(doc):
            assert container.get("readinessProbe") and container.get("livenessProbe"), _key(doc)
            assert container["resources"]["limits"]["memory"], _key(doc)
    # Every Secret/ConfigMap a pod reads from is one the docs say how to create, or is rendered.
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for doc in (d for d in docs if d["kind"] in WORKLOADS):
        for container in containers(doc):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps


def test_gpu_overlay_puts_llm_and_tts_on_gpus_and_asr_on_cpu() -> None:
    docs = {d["metadata"]["name"]: d for d in render(K8S / "gpu") if d["kind"] == "Deployment"}
    for name, setting, value in (("llm-worker", "INZWA_LLM_ENGINE", "vllm"),
                                 ("tts-worker", "INZWA_TTS_DEVICE", "cuda")):
        (container,) = containers(docs[name])
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert env_of(container)[setting] == value
        assert "INZWA_ADVERTISE_HOST" in env_of(container), "the patch dropped the base env"
        assert docs[name]["spec"]["template"]["spec"]["nodeSelector"]
    (asr,) = containers(docs["asr-worker"])
    assert "nvidia.com/gpu" not in asr["resources"]["limits"]


def _shard_neutral(doc: Doc) -> Doc:
    """A worker manifest without what makes it shard 1's: its name, labels, orchestrator."""
    doc = copy.deepcopy(doc)
    text = yaml.safe_dump(doc).replace("-worker-1", "-worker")
    doc = yaml.safe_load(text)
    for meta in (doc["metadata"], doc["spec"].get("template", {}).get("metadata", {})):
        meta.get("labels", {}).pop("inzwa/shard", None)
    for container in doc["spec"].get("template", {}).get("spec", {}).get("containers", []):
        container["env"] = [e for e in container["env"] if not e["name"].startswith(
            ("INZWA_ZMQ_HOST", "INZWA_INGRESS", "INZWA_CONTROL", "INZWA_RESULTS"))]
    return doc


def test_shards_overlay_has_an_orchestrator_and_workers_per_shard_and_gateways_know_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from common.settings import Settings

    docs = render(K8S / "shards")
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "inzwa-config")
    monkeypatch.setenv("INZWA_SHARDS", config["data"]["INZWA_SHARDS"])  # read as a pod reads it
    shards = Settings(_env_file=None).shards  # type: ignore[call-arg]
    orchestrator = next(d for d in docs if _key(d) == ("StatefulSet", "inzwa", "orchestrator"))
    replicas = orchestrator["spec"]["replicas"]
    assert [s["name"] for s in shards] == [f"orchestrator-{i}" for i in range(replicas)]
    assert orchestrator["spec"]["volumeClaimTemplates"], "each shard keeps its own store"
    base = {_key(d): d for d in render(K8S / "base")}
    shard_1 = [d for d in docs if d["metadata"]["name"].endswith("-worker-1")]
    assert {d["kind"] for d in shard_1} == {"Service", "Deployment", "PodDisruptionBudget"}
    for doc in shard_1:  # the base workers, but for name, labels and orchestrator
        assert _shard_neutral(doc) == base[_key(_shard_neutral(doc))]
        for container in containers(doc) if doc["kind"] == "Deployment" else []:
            assert env_of(container)["INZWA_CONTROL_ENDPOINT"] == shards[1]["control"]
            assert "orchestrator-1" in env_of(container)["INZWA_RESULTS_ENDPOINT"]
