"""Tiny studies for the Ray tests: a GDXray Faster R-CNN trial of a few iterations."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def tiny_study(
    tmp: Path,
    *,
    iterations: int = 6,
    checkpoint_period: int = 2,
    eval_period: int = 3,
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    regimes=("frozen", "full"),
    batch_size: int = 2,
    name: str = "tiny",
) -> Path:
    """A study file under ``tmp``: gdxray x ConvNeXt-T supervised x ``regimes``, synthetic data."""
    smoke = yaml.safe_load((REPO / "experiments" / "smoke.yaml").read_text())
    study = copy.deepcopy(smoke)
    study["name"] = name
    study["scaling"] = {
        "workers": workers,
        "use_gpu": False,
        "gpus_per_worker": 0,
        "cpus_per_worker": cpus_per_worker,
    }
    study["backbones"] = [b for b in smoke["backbones"] if b["id"] == "convnext_t-supervised"]
    study["rows"] = [{"backbone": "convnext_t-supervised", "regime": r} for r in regimes]
    gd = next(d for d in smoke["datasets"] if d["id"] == "gdxray")
    gd["root"] = str(tmp / "data" / "gdxray")
    study["datasets"] = [gd]
    recipe = study["recipes"]["detectron2"]
    recipe.update(
        batch_size=batch_size, eval_period=eval_period, checkpoint_period=checkpoint_period, log_period=1
    )
    recipe["schedule"]["iterations"] = iterations
    study["recipes"] = {"detectron2": recipe}
    gd["overrides"]["schedule"] = {"length": "6x"}
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path
