"""cluster/kubernetes/rayjob.yaml: a KubeRay ``ray.io/v1`` RayJob that parses with
yaml.safe_load, has what the RayJob CRD requires, asks for GPU workers from zero, takes the W&B
and HF tokens only from a Kubernetes Secret, and resumes with the same manifest.

No CRD can be installed offline here, so the CRD's requirements are stated below. They were
read from KubeRay v1.7.0 ``ray-operator/config/crd/bases/ray.io_rayjobs.yaml`` (version v1),
against whose openAPIV3Schema the manifest also validated with jsonschema, with no key
outside the schema's properties (a one-off check, see docs/cluster.md)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "cluster" / "kubernetes" / "rayjob.yaml"
DOCKERFILE = REPO / "cluster" / "kubernetes" / "Dockerfile"

# Required by the RayJob v1 CRD (KubeRay v1.7.0), as paths into the manifest.
CRD_REQUIRED = {
    "spec.rayClusterSpec": ["headGroupSpec"],
    "spec.rayClusterSpec.headGroupSpec": ["template"],
    "spec.rayClusterSpec.headGroupSpec.template.spec": ["containers"],
    "spec.rayClusterSpec.workerGroupSpecs[]": ["groupName", "maxReplicas", "minReplicas", "template"],
    "spec.rayClusterSpec.workerGroupSpecs[].template.spec": ["containers"],
    "containers[]": ["name"],  # every container (head and workers)
    "env[]": ["name"],
    "secretKeyRef": ["key"],
}
SECRET_VARS = {"WANDB_API_KEY", "HF_TOKEN"}


def load() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def _at(doc: dict, path: str) -> list:
    """Every node at a dotted path; ``x[]`` descends into each item of list ``x``."""
    nodes = [doc]
    for part in path.split("."):
        key, each = (part[:-2], True) if part.endswith("[]") else (part, False)
        nodes = [n[key] for n in nodes if isinstance(n, dict) and key in n]
        if each:
            nodes = [item for n in nodes for item in n]
    return nodes


def _containers(doc: dict) -> list[dict]:
    cluster = doc["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_manifest_is_a_rayjob_with_the_crd_required_fields():
    doc = load()
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])  # a DNS label
    for path, keys in CRD_REQUIRED.items():
        if path == "containers[]":
            nodes = _containers(doc)
        elif path == "env[]":
            nodes = [e for c in _containers(doc) for e in c.get("env", [])]
        elif path == "secretKeyRef":
            nodes = [
                e["valueFrom"]["secretKeyRef"]
                for c in _containers(doc)
                for e in c.get("env", [])
                if "valueFrom" in e
            ]
        else:
            nodes = _at(doc, path)
        assert nodes, f"{path}: missing"
        for node in nodes:
            missing = [k for k in keys if k not in node]
            assert not missing, f"{path}: missing required {missing}"
    for c in _containers(doc):
        assert c["image"], c["name"]
    assert doc["spec"]["submissionMode"] in ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")


def test_gpu_worker_group_autoscales_from_zero_on_a_cpu_head():
    doc = load()
    cluster = doc["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    (gpu,) = cluster["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 and gpu["replicas"] == 0 and gpu["maxReplicas"] >= 1
    worker = gpu["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["template"]["spec"]["tolerations"])


def test_tokens_come_only_from_a_kubernetes_secret():
    doc = load()
    text = MANIFEST.read_text()
    for c in _containers(doc):
        env = {e["name"]: e for e in c["env"]}
        assert SECRET_VARS <= set(env), c["name"]
        for var in SECRET_VARS:
            assert "value" not in env[var], f"{c['name']}: {var} must not be a literal"
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "raybench-secrets", "key": var}
    # no token-like literal anywhere (W&B keys are 40 hex chars, HF tokens start with hf_)
    assert not re.search(r"\b[0-9a-f]{40}\b|\bhf_[A-Za-z0-9]{20,}", text)


def test_entrypoint_runs_the_grid_on_shared_storage_and_always_resumes():
    doc = load()
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:2] == ["python", "/home/ray/raybench/experiments/run_grid.py"]
    storage = argv[argv.index("--storage") + 1]
    assert storage.startswith(("s3://", "gs://")), storage  # reachable from every pod
    assert argv[-1] == "--resume"  # first run and re-apply alike: the same manifest resumes
    study = argv[argv.index("--study") + 1]
    assert (REPO / Path(study).relative_to("/home/ray/raybench")).is_file()
    # no shell operators: KubeRay pastes the entrypoint unquoted into the submitter's shell line
    assert not set("$;&|`<>") & set(doc["spec"]["entrypoint"])
    assert doc["spec"]["backoffLimit"] >= 1 and doc["spec"]["shutdownAfterJobFinishes"] is True


def test_image_is_built_from_the_pinned_ray_image_with_raybench_installed():
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == f"FROM rayproject/ray:{ray.__version__}-py311-gpu"
    assert "COPY --chown=ray:users . /home/ray/raybench" in lines
    assert "RUN pip install --no-cache-dir -e /home/ray/raybench" in lines
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data", "runs"} <= set(ignored)
    doc = load()
    images = {c["image"] for c in _containers(doc)}
    assert len(images) == 1  # head, workers and submitter (defaults to the head's) run one image
