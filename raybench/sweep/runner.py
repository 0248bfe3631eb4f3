"""Run a study's trials as a Ray Tune experiment of Ray Train jobs (the only place Ray is used).

Tune enumerates the trial specs (a grid over their names); each Tune trial is a function
trainable that launches one ``TorchTrainer``. Resume: ``Tuner.restore`` continues unfinished
and errored trials, each from its own Train run's last checkpoint.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Any

from raybench.results.store import ray_storage
from raybench.study import Study, TrialSpec
from raybench.sweep.layout import ExperimentLayout, is_uri
from raybench.sweep.trainable import TRIAL_KEY, dumps_specs, forwarded_env, run_trial


@dataclass(frozen=True)
class SweepOptions:
    """How to run the sweep (not part of the study: the same study runs anywhere)."""

    storage: str = "runs"
    experiment: str | None = None
    resume: bool = False
    restart_errored: bool = False
    only: str | None = None
    address: str | None = None
    num_cpus: int | None = None
    trial_retries: int = 1
    worker_retries: int = 2
    driver_cpus: float | None = None  # None: the study's scaling.driver_cpus


def connect(options: SweepOptions) -> None:
    """Join a running cluster (RAY_ADDRESS / --address / a local one) or start local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Train's controller polls workers at this period; 2 s dominates toy trials.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    address = options.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    if options.num_cpus is None:  # an explicit --num-cpus means "a local Ray of that size"
        try:
            ray.init(address="auto")  # a cluster started with `ray start` / `ray up` on this node
            return
        except (ConnectionError, RuntimeError, ValueError):
            pass
    # Local Ray: the dashboard stays off (nothing listens beyond localhost by default).
    ray.init(num_cpus=options.num_cpus, include_dashboard=False, configure_logging=False)


def max_concurrency(trials: list[TrialSpec], driver_cpus: float, study_cap: int | None) -> int:
    """How many trials fit at once: each costs ``driver_cpus`` + its workers' resources.

    Train V2 schedules its workers outside the Tune trial's resources, so Tune alone would
    start one driver per free CPU and starve the workers; we cap it here. With no GPU in the
    cluster yet (an autoscaling cluster that starts empty) the study's cap or the grid size
    is used and the autoscaler adds nodes.
    """
    import ray

    total = ray.cluster_resources()
    s = trials[0].scaling
    cpus = total.get("CPU", 0.0)
    by_cpu = math.floor(cpus / (driver_cpus + s.workers * s.cpus_per_worker)) if cpus else 0
    fits = by_cpu
    if s.use_gpu:
        gpus = total.get("GPU", 0.0)
        if gpus == 0:
            fits = len(trials)  # autoscaling: GPU nodes appear on demand
        elif s.gpus_per_worker > 0:
            fits = min(by_cpu, math.floor(gpus / (s.workers * s.gpus_per_worker)))
    fits = max(1, fits)
    return min(fits, study_cap) if study_cap else fits


def prepare_synthetic(trials: list[TrialSpec]) -> None:
    """Write the synthetic datasets the study asks for (smoke runs) before any trial starts."""
    from pathlib import Path

    from raybench.data.synth import synthesize

    done: set[str] = set()
    for t in trials:
        d = t.dataset
        if d.synthetic is None or d.root in done or is_uri(d.root) or Path(d.root).exists():
            continue
        print(f"[raybench] writing synthetic {d.format} ({d.synthetic.images} images) to {d.root}")
        tmp = Path(f"{d.root}.tmp-{os.getpid()}")
        synthesize(d.format, tmp, images=d.synthetic.images, size=d.synthetic.size, seed=d.synthetic.seed)
        os.replace(tmp, d.root)  # atomic: a half-written dataset never looks complete
        done.add(d.root)


def run_study(study: Study, options: SweepOptions) -> dict[str, Any]:
    """Run (or resume) the study's sweep; returns per-trial final state and metrics."""
    from ray import tune

    trials = study.select(options.only)
    driver_cpus = study.scaling.driver_cpus if options.driver_cpus is None else options.driver_cpus
    prepare_synthetic(trials)
    layout = ExperimentLayout.create(options.storage, options.experiment or study.name)
    connect(options)
    specs = dumps_specs(trials)
    settings = {
        "layout": {"storage": layout.storage, "name": layout.name},
        "worker_retries": options.worker_retries,
        "env": forwarded_env(),
    }
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, specs=specs, settings=settings),
        {"CPU": max(driver_cpus, 0.01)},
    )
    concurrency = max_concurrency(trials, driver_cpus, study.scaling.max_concurrent_trials)
    resume_cmd = resume_command(study, options, layout)
    print(f"[raybench] experiment {layout.root}: {len(trials)} trials, up to {concurrency} at once")
    print(f"[raybench] resume after any failure with: {resume_cmd}")
    sys.stdout.flush()

    storage_path, storage_fs = ray_storage(layout.storage)
    root_path, _ = ray_storage(layout.root)
    if options.resume and tune.Tuner.can_restore(root_path, storage_filesystem=storage_fs):
        tuner = tune.Tuner.restore(
            root_path,
            trainable=trainable,
            storage_filesystem=storage_fs,
            resume_unfinished=True,
            resume_errored=not options.restart_errored,
            restart_errored=options.restart_errored,
        )
    else:
        if options.resume:
            print(f"[raybench] nothing to resume at {layout.root}; starting it")
        tuner = tune.Tuner(
            trainable,
            param_space={TRIAL_KEY: tune.grid_search([t.name for t in trials])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=concurrency,
                reuse_actors=True,
                trial_name_creator=lambda t: t.config[TRIAL_KEY],
                trial_dirname_creator=lambda t: t.config[TRIAL_KEY],
            ),
            run_config=tune.RunConfig(
                name=layout.name,
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                failure_config=tune.FailureConfig(max_failures=options.trial_retries),
                verbose=1,
            ),
        )
    grid = tuner.fit()
    summary: dict[str, Any] = {}
    for result in grid:
        name = (result.config or {}).get(TRIAL_KEY, "?")
        summary[name] = {
            "error": repr(result.error) if result.error else None,
            "metrics": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))},
        }
    failed = [n for n, s in summary.items() if s["error"]]
    print(
        f"[raybench] done: {len(summary) - len(failed)} finished, {len(failed)} failed; "
        f"results in {layout.root}"
    )
    if failed:
        print(f"[raybench] failed: {', '.join(sorted(failed))}\n[raybench] retry with: {resume_cmd}")
    return summary


def resume_command(study: Study, options: SweepOptions, layout: ExperimentLayout) -> str:
    parts = ["python experiments/run_grid.py", "--study", study.source, "--storage", layout.storage]
    if options.experiment:
        parts += ["--experiment", options.experiment]
    if options.only:
        parts += ["--only", repr(options.only)]
    return " ".join(parts + ["--resume"])


__all__ = ["SweepOptions", "connect", "max_concurrency", "run_study", "resume_command", "is_uri"]
