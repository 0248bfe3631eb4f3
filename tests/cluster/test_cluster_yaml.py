"""cluster.yaml is a valid Ray cluster-launcher config, sets up every node it can launch (code,
dependencies, S3 access) and keeps secrets and ports closed."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]


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


def test_every_node_type_stages_from_the_mounted_script():
    """Staging runs on every node, after the install, from the synced checkout (cluster/stage.sh;
    its behaviour: tests/cluster/test_staging.py)."""
    cfg = load()
    mount = _repo_mount(cfg)
    for node_type in cfg["available_node_types"]:
        commands = [shlex.split(c) for c in _setup_commands(cfg, node_type)]
        stage = [i for i, argv in enumerate(commands) if f"{mount}/cluster/stage.sh" in argv]
        assert len(stage) == 1, f"{node_type}: no (or more than one) cluster/stage.sh setup command"
        assert commands[stage[0]][-1] == "sync"
        install = next(i for i, argv in enumerate(commands) if "pip" in argv)
        assert install < stage[0], f"{node_type}: stage after the install (pip may add the aws CLI)"


def test_ray_starts_with_the_node_env_of_the_staging():
    """`ray start` (whose environment every Ray process inherits) sources ~/.raybench/node.env in
    the same shell command: each setup/start command is a shell of its own."""
    cfg = load()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cfg[key] if "ray start" in c]
        assert len(start) == 1, key
        before = start[0].split("ray start")[0]
        assert ". ~/.raybench/node.env;" in before, key


def test_stage_env_travels_with_the_checkout():
    """cluster/stage.env reaches the nodes through the repo mount, whose rsync filter is
    .gitignore: git must not ignore it (nor the script)."""
    for path in ("cluster/stage.env", "cluster/stage.sh"):
        proc = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, capture_output=True)
        if proc.returncode == 128:
            pytest.skip("not a git checkout")
        assert proc.returncode == 1, f"{path} is git-ignored, so rsync_filter would keep it off the nodes"
    cfg = load()
    commands = [c for key, value in cfg.items() if key.endswith("_commands") for c in value]
    assert not [c for c in commands if "s3://" in c or "RAYBENCH_STAGE_S3" in c]  # it lives in stage.env


# describe-instance-types facts the launcher reads (vCPUs, RAM, GPUs), for the types we use
EC2 = {
    "m6i.2xlarge": {"VCpuInfo": {"DefaultVCpus": 8}, "MemoryInfo": {"SizeInMiB": 32768}},
    "g5.4xlarge": {
        "VCpuInfo": {"DefaultVCpus": 16},
        "MemoryInfo": {"SizeInMiB": 65536},
        "GpuInfo": {
            "Gpus": [
                {"Name": "A10G", "Manufacturer": "NVIDIA", "Count": 1, "MemoryInfo": {"SizeInMiB": 24576}}
            ]
        },
    },
    "p4d.24xlarge": {
        "VCpuInfo": {"DefaultVCpus": 96},
        "MemoryInfo": {"SizeInMiB": 1179648},
        "GpuInfo": {
            "Gpus": [
                {"Name": "A100", "Manufacturer": "NVIDIA", "Count": 8, "MemoryInfo": {"SizeInMiB": 40960}}
            ]
        },
    },
}


def _filled(monkeypatch) -> dict:
    """Node types as Ray's AWS provider completes them at `ray up` (EC2's answer faked)."""
    from ray.autoscaler._private.aws import node_provider

    instances = [{"InstanceType": name, **facts} for name, facts in EC2.items()]
    monkeypatch.setattr(node_provider, "list_ec2_instances", lambda *a, **k: instances)
    cfg = node_provider.AWSNodeProvider.fillout_available_node_types_resources(load())
    return cfg["available_node_types"]


def test_gpu_types_declare_their_memory_and_keep_ray_autodetection(monkeypatch):
    """Each GPU type offers one `vram_<GB>gb` resource per GPU (what scaling.resources_per_worker
    can ask for) matching its GPUs' memory; CPU, GPU and accelerator_type stay autodetected."""
    cfg = load()
    filled = _filled(monkeypatch)
    for name, node_type in cfg["available_node_types"].items():
        if name == cfg["head_node_type"]:
            continue
        gpu = EC2[node_type["node_config"]["InstanceType"]]["GpuInfo"]["Gpus"][0]
        vram = {k: v for k, v in node_type["resources"].items() if re.fullmatch(r"vram_\d+gb", k)}
        assert vram == {f"vram_{gpu['MemoryInfo']['SizeInMiB'] // 1024}gb": gpu["Count"]}, name
        resources = filled[name]["resources"]
        assert resources["GPU"] == gpu["Count"] and resources[f"accelerator_type:{gpu['Name']}"] == 1, name
        assert resources["CPU"] > 0 and resources["memory"] > 0, name


# Largest estimated peak per image in bf16: Rubber Rings' Mask2Former on 800x800 crops, about
# 4.3x the pixels of Severstal's 384x384 crops, whose 16 images peak at 7.9 GiB on an H100
# (docs/performance.md): 7.9 / 16 x 4.3 = 2.1 GiB. Mask R-CNN at 800x800: 12.5 / 8 = 1.6 GiB.
GIB_PER_IMAGE = 7.9 / 16 * 4.3


def test_gpu_types_carry_a_batch_note_that_fits_and_that_a_study_accepts():
    from raybench.study.spec import ScalingSpec

    cfg = load()
    lines = (REPO / "cluster.yaml").read_text().splitlines()
    for name, node_type in cfg["available_node_types"].items():
        if name == cfg["head_node_type"]:
            continue
        start = lines.index(next(ln for ln in lines if ln.startswith(f"  {name}:")))
        block = lines[
            start + 1 : next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("   "))
        ]
        notes = [
            ln.strip().lstrip("#").strip() for ln in block if ln.strip().startswith("# ") and "scaling:" in ln
        ]
        assert len(notes) == 1, f"{name}: no 'scaling: {{...}}' batch note in its comments"
        scaling = ScalingSpec(**yaml.safe_load(notes[0])["scaling"])  # a valid study `scaling`
        (resource,) = scaling.resources_per_worker
        assert resource in node_type["resources"], f"{name}: the note asks for {resource}, not offered"
        gb = int(re.fullmatch(r"vram_(\d+)gb", resource).group(1))
        micro, accum = scaling.per_worker_batch(16)
        assert micro * accum == 16
        assert micro * GIB_PER_IMAGE <= 0.9 * gb, f"{name}: {micro} images do not fit {gb} GiB"  # MiB // 1024
