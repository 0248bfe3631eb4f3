"""cluster.yaml is a valid Ray cluster-launcher config and keeps secrets and ports closed."""

from __future__ import annotations

import json
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
