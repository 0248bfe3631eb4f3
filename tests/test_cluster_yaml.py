"""cluster.yaml is a valid Ray cluster-launcher config, sets up every node it can launch (code,
dependencies, S3 access) and keeps secrets and ports closed."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import jsonschema
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]


def load() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_matches_the_ray_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(load(), schema)


def test_cluster_yaml_image_matches_installed_ray_and_no_ray_ml():
    cfg = load()
    image = cfg["docker"]["image"]
    assert image == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert "ray-ml" not in image


def test_cluster_yaml_has_cpu_head_and_gpu_workers():
    cfg = load()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["node_config"]["InstanceType"].startswith(("m", "c", "r"))  # no GPU on the head
    gpu = [n for n, t in types.items() if n != cfg["head_node_type"]]
    assert gpu and all(types[n]["min_workers"] == 0 for n in gpu)  # autoscaling from zero


def test_no_secrets_and_dashboard_on_loopback():
    text = (REPO / "cluster.yaml").read_text()
    assert "WANDB_API_KEY" not in text and "AWS_SECRET" not in text
    start = " ".join(load()["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start


def _repo_mount(cfg: dict) -> str:
    """The remote path the repo checkout is synced to (local paths resolve against the cwd of
    `ray up`, which docs/cluster.md says is the repo root)."""
    mounts = {
        remote: local
        for remote, local in (cfg.get("file_mounts") or {}).items()
        if (REPO / os.path.expanduser(local)).resolve() == REPO
    }
    assert len(mounts) == 1, f"file_mounts must sync the repo root to the nodes: {cfg.get('file_mounts')}"
    return next(iter(mounts))


def _setup_commands(cfg: dict, node_type: str) -> list[str]:
    """The setup commands Ray runs on a node of ``node_type`` (common + head/worker + per type)."""
    kind = "head" if node_type == cfg["head_node_type"] else "worker"
    per_type = cfg["available_node_types"][node_type].get("worker_setup_commands")
    own = per_type if kind == "worker" and per_type is not None else cfg.get(f"{kind}_setup_commands", [])
    return [*cfg.get("setup_commands", []), *own]


def test_file_mounts_sync_the_repo_without_local_clutter():
    cfg = load()
    assert _repo_mount(cfg) == "~/raybench"
    assert any(".git" in e for e in cfg.get("rsync_exclude", []))
    # .gitignore as rsync filter keeps .venv, data/ and runs/ out of the copy
    assert ".gitignore" in cfg.get("rsync_filter", [])
    ignored = (REPO / ".gitignore").read_text().split()
    assert {".venv/", "/data/", "/runs/"} <= set(ignored)


def test_every_node_type_installs_raybench_from_the_mounted_repo():
    cfg = load()
    mount = _repo_mount(cfg)
    for node_type in cfg["available_node_types"]:
        installs = [
            shlex.split(c) for c in _setup_commands(cfg, node_type) if "pip install" in c and "raybench" in c
        ]
        assert installs, f"{node_type}: no setup command installs raybench"
        for argv in installs:
            assert mount in argv, f"{node_type}: raybench must come from the synced {mount}: {argv}"
    text = (REPO / "cluster.yaml").read_text()
    assert "git+" not in text and "your-org" not in text  # no placeholder sources


def test_every_gpu_worker_type_gets_an_instance_profile_for_s3():
    cfg = load()
    for name, node_type in cfg["available_node_types"].items():
        if name == cfg["head_node_type"]:
            continue  # Ray attaches its default profile to the head itself
        profile = node_type["node_config"].get("IamInstanceProfile")
        assert isinstance(profile, dict) and (profile.get("Name") or profile.get("Arn")), name
        assert set(profile) <= {"Name", "Arn"}, name  # EC2 RunInstances' IamInstanceProfileSpecification
