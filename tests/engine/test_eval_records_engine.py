"""The final evaluation's per-image records leave the engine: written by a plain ``train()``
(what ``raybench train`` runs), by two DDP workers (gathered across ranks) and by the Ray sweep
(into the trial's results store); in every case they reproduce the logged final metric."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from raybench.engine import train
from raybench.engine.loaders import build_datasets
from raybench.engine.sinks import read_metrics
from raybench.evaluation.records import full_weights
from raybench.results.store import read_eval_records
from raybench.study import TrialSpec, load_study

REPO = Path(__file__).resolve().parents[2]
# (smoke trial, headline metric): a semantic (Mask2Former) and a detection (Faster R-CNN) trial.
TRIALS = {
    "gdxray": ("gdxray-convnext_t-supervised-frozen-s42", "val/box_AP50"),
    "severstal": ("severstal-convnext_t-supervised-frozen-s42", "val/mIoU"),
}


@pytest.fixture(scope="module")
def smoke_file(tmp_path_factory) -> Path:
    """A copy of the smoke study whose synthetic data roots land in a temporary folder."""
    base = tmp_path_factory.mktemp("smoke")
    (base / "experiments").mkdir()
    path = base / "experiments" / "smoke.yaml"
    shutil.copy(REPO / "experiments" / "smoke.yaml", path)
    return path


def _short(trial: TrialSpec, iterations: int = 2) -> TrialSpec:
    r = trial.recipe
    recipe = dataclasses.replace(
        r,
        schedule=dataclasses.replace(r.schedule, iterations=iterations),
        eval_period=1,  # two evaluations: only the last one's records are kept
        checkpoint_period=iterations,
        log_period=iterations,
    )
    return trial.replace(recipe=recipe)


def _check(out: Path, trial: TrialSpec, metric: str, iterations: int) -> np.ndarray:
    stored = read_eval_records(out)
    assert list(stored) == [trial.name] and list(stored[trial.name]) == [iterations]
    records = stored[trial.name][iterations].records
    part = records.by_metric(metric)
    assert part is not None, records.metrics()
    final = [r for r in read_metrics(out / "metrics.jsonl") if metric in r][-1]
    assert final["iter"] == iterations
    got = float(part.compute(metric, full_weights(part))[0])
    assert got == pytest.approx(final[metric], abs=1e-6) or (np.isnan(got) and np.isnan(final[metric]))
    return part.images


@pytest.mark.parametrize("dataset", sorted(TRIALS))
def test_plain_train_writes_the_final_records(smoke_file, tmp_path, dataset):
    torch.set_num_threads(1)
    name, metric = TRIALS[dataset]
    trial = _short(load_study(smoke_file).trial(name))
    out = tmp_path / "run"
    train(trial, out, verbose=False)
    assert sorted(p.name for p in (out / "records").iterdir()) == ["eval-000000002.parquet"]
    images = _check(out, trial, metric, 2)
    assert len(images) == len(build_datasets(trial)[1]) >= 2  # every validation image


def _ddp_worker(rank: int, trial_json: str, out: str, init_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        train(TrialSpec.from_json(trial_json), out, verbose=False)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("dataset", sorted(TRIALS))
def test_two_workers_write_records_of_every_image(smoke_file, tmp_path, dataset):
    name, metric = TRIALS[dataset]
    trial = _short(load_study(smoke_file).trial(name))
    n_val = len(build_datasets(trial)[1])  # (also writes the synthetic root before the workers start)
    out = tmp_path / "two"
    mp.spawn(_ddp_worker, args=(trial.to_json(), str(out), str(tmp_path / "pg")), nprocs=2, join=True)
    images = _check(out, trial, metric, 2)
    # Both validation shards' images, each once (rank 0 holds items 0, 2, ..., rank 1 items 1, 3, ...).
    assert len(images) == n_val >= 2 and len(set(images.tolist())) == n_val


@pytest.mark.timeout(600)
def test_ray_sweep_writes_records_into_the_results_store(tmp_path, ray_session, monkeypatch):
    """A 2-worker trial through Ray Tune + Ray Train: rank 0 writes the records of the final
    evaluation (gathered from both workers) next to the trial's Parquet parts."""
    from raybench.results.store import read_results
    from raybench.sweep import SweepOptions, run_study
    from tests.helpers.sweep import tiny_study

    monkeypatch.setenv("WANDB_MODE", "disabled")
    path = tiny_study(
        tmp_path,
        iterations=2,
        checkpoint_period=2,
        eval_period=1,
        workers=2,
        cpus_per_worker=0.5,
        regimes=("frozen",),
        name="recs",
    )
    study = load_study(path)
    summary = run_study(study, SweepOptions(storage=str(tmp_path / "store"), driver_cpus=0))
    assert not any(s["error"] for s in summary.values())
    root = tmp_path / "store" / "recs"
    (trial,) = study.trials
    stored = read_eval_records(root)
    assert list(stored) == [trial.name] and list(stored[trial.name]) == [2]
    assert "/trials/" in stored[trial.name][2].path  # the trial's folder of the results store
    part = stored[trial.name][2].records.by_metric("val/box_AP50")
    assert len(part.images) == len(build_datasets(trial)[1])
    results = read_results(str(root))
    final = results[(results.metric == "val/box_AP50") & (results.iter == 2)].value.iloc[0]
    assert part.compute("val/box_AP50", full_weights(part))[0] == pytest.approx(final, abs=1e-6)
