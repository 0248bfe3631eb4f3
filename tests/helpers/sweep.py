"""Tiny studies for the Ray tests: a GDXray Faster R-CNN trial of a few iterations.

Failure drills and traces the sweep tests drive through the environment (forwarded by the
sweep to the Ray Train workers, see ``raybench.sweep.trainable.forwarded_env``):

- ``RAYBENCH_FAULT_INJECT="<trial glob>@<iter>"`` (``trainable.FAULT_ENV``): SIGKILL the train
  worker when it reports iteration ``<iter>``, once (a marker file in the trial folder,
  ``fault-injected-at-<iter>``, stops it from firing again, also after --restart-errored).
- ``RAYBENCH_NAN_INJECT="<trial glob>@<iter>[:<term>]"`` (``trainable.NAN_ENV``): loss term
  ``<term>`` (default: the task's first) is NaN at iteration ``<iter>``, every time that
  iteration is trained (like a real non-finite loss); the engine raises
  ``NonFiniteLossError("non-finite loss at iteration <iter>: <term> = nan ...")``.
- ``RAYBENCH_BATCH_TRACE=<dir>`` (``raybench.engine.loaders.BATCH_TRACE_ENV``): each worker
  appends ``{"iter", "rank", "samples"}`` per iteration to ``<dir>/batches.rank<r>.jsonl``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


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
    use_gpu: bool = False,
    gpus_per_worker: float = 0,
) -> Path:
    """A study file under ``tmp``: gdxray x ConvNeXt-T supervised x ``regimes``, synthetic data."""
    smoke = yaml.safe_load((REPO / "experiments" / "smoke.yaml").read_text())
    study = copy.deepcopy(smoke)
    study["name"] = name
    study["scaling"] = {
        "workers": workers,
        "use_gpu": use_gpu,
        "gpus_per_worker": gpus_per_worker,
        "cpus_per_worker": cpus_per_worker,
    }
    # ConvNeXt's design at 1/8 of ConvNeXt-T's parameters (same id, so the same trial names and
    # recipe): these studies test the sweep's machinery, whose time went into writing and
    # copying ConvNeXt-T's ~0.35 GB checkpoints.
    atto = {"timm_name": "convnext_atto.d2_in1k"}
    study["backbones"] = [b | atto for b in smoke["backbones"] if b["id"] == "convnext_t-supervised"]
    study["rows"] = [{"backbone": "convnext_t-supervised", "regime": r} for r in regimes]
    gd = next(d for d in smoke["datasets"] if d["id"] == "gdxray")
    gd["root"] = str(tmp / "data" / "gdxray")
    gd["synthetic"]["images"] = 24  # the smoke study's 40 are for learning; these tests check machinery
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
