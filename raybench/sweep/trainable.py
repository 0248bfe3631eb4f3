"""The two functions Ray runs for a trial.

- :func:`run_trial` is the Ray Tune *function trainable* (the trial's driver, 1 CPU by
  default): it builds a ``TorchTrainer`` for its trial and waits for it.
- :func:`train_worker` is the Ray Train *worker function*: it runs raybench's engine loop
  (the same loop ``raybench train`` runs without Ray) and reports through Ray.

What they use lives next door: :mod:`~raybench.sweep.reporter` (the worker's reporter,
checkpoint links, resume records), :mod:`~raybench.sweep.failures` (which failures are
retried), :mod:`~raybench.sweep.drills` (fault and NaN drills) and
:mod:`~raybench.sweep.workerenv` (the environment the workers get).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from raybench.results.store import read_status_of, write_status
from raybench.storage import ray_storage
from raybench.study import TrialSpec
from raybench.sweep.console import worker_logging
from raybench.sweep.drills import FAULT_ENV, NAN_ENV, nan_task_wrapper
from raybench.sweep.failures import (
    DETERMINISTIC,
    TrialFailed,
    deterministic_failure,
    deterministic_failure_record,
    failure_message,
    worker_reported,
)
from raybench.sweep.layout import ExperimentLayout
from raybench.sweep.reporter import RESUMES_FILE, RayReporter, checkpoint_iteration, record_resume
from raybench.sweep.scratch import scratch_dir
from raybench.sweep.workerenv import FORWARDED_ENV, forwarded_env, split_secrets

# Key of the Tune config / Train loop config (plain JSON-able values only).
TRIAL_KEY = "trial"

log = logging.getLogger(__name__)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train worker function: resume from Ray's checkpoint if any, run the engine."""
    import ray.train
    import torch

    from raybench.engine import NonFiniteLossError, train

    worker_logging()
    secrets = config.get("secrets")
    if secrets is not None:  # before anything reads them (W&B, the hub)
        os.environ.update(ray.get(secrets))
    trial = TrialSpec.from_json(config[TRIAL_KEY])
    layout = ExperimentLayout(**config["layout"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    if not trial.scaling.use_gpu:
        torch.set_num_threads(max(1, int(trial.scaling.cpus_per_worker)))
    # Launch time: from the trial driver's start to this worker running (Ray's overhead).
    base_extra = {
        "metric": trial.dataset.headline_metric,
        "launch_s": time.time() - float(config.get("driver_started", time.time())),
        # which forwarded variables reached this worker (names only, never values): "did my
        # HF_TOKEN / WANDB_API_KEY get to the workers?"
        "env": sorted(k for k in FORWARDED_ENV if k in os.environ),
    }
    checkpoint = ray.train.get_checkpoint()
    reporter = RayReporter(trial, layout, rank)
    base_extra["wandb_start_s"] = round(reporter.tracker_start_s, 3)
    if rank == 0:
        write_status(layout.trial_dir(trial.name), "running", extra=base_extra)
    ok = False
    engine_start = time.time()

    def failed(extra: dict, exc: BaseException) -> None:
        """The trial's status.json says it failed, and why (rank 0 only)."""
        message = f"{type(exc).__name__}: {exc}"
        status_extra = base_extra | reporter.status_extra() | extra
        write_status(layout.trial_dir(trial.name), "failed", message, extra=status_extra)

    try:
        with scratch_dir(trial.name) as work:
            if checkpoint is not None:
                with checkpoint.as_directory() as resume_dir:
                    start = checkpoint_iteration(Path(resume_dir))
                    reporter.resumed_from = start
                    if rank == 0:
                        record_resume(layout, trial.name, Path(resume_dir))
                    wrapper = nan_task_wrapper(trial, start or 0, ctx.get_world_size())
                    final = train(
                        trial,
                        Path(work),
                        reporter=reporter,
                        resume_from=Path(resume_dir),
                        task_wrapper=wrapper,
                    )
            else:
                wrapper = nan_task_wrapper(trial, 0, ctx.get_world_size())
                final = train(trial, Path(work), reporter=reporter, resume_from=None, task_wrapper=wrapper)
        ok = True
    except NonFiniteLossError as exc:
        # Deterministic: a retry from the last checkpoint would compute the same NaN. Every
        # worker raises it together (the losses are averaged over workers first), so every
        # worker returns normally here and Ray Train does not restart the group; the trial's
        # driver reads this status and fails the Tune trial with this message.
        if rank == 0:
            failed({"failure": deterministic_failure_record(exc), "session": config.get("session")}, exc)
        log.error("%s: %s: %s", trial.name, type(exc).__name__, exc)
        return
    except BaseException as exc:
        if rank == 0:
            failed({}, exc)
        raise
    finally:
        engine_s = time.time() - engine_start
        wandb_finish_s = reporter.close(ok)
    if rank == 0:
        timings = {
            "engine_s": round(engine_s, 3),
            "report_s": round(reporter.report_s, 3),
            "wandb_finish_s": round(wandb_finish_s, 3),
        }
        write_status(
            layout.trial_dir(trial.name),
            "finished",
            extra=base_extra | reporter.status_extra() | timings | {"final": _jsonable(final)},
        )


def _jsonable(metrics: Any) -> dict[str, float]:
    if not isinstance(metrics, dict):
        return {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def run_trial(config: dict[str, Any], specs: dict[str, str], settings: dict[str, Any]) -> None:
    """Ray Tune function trainable: one TorchTrainer per trial, named after the trial."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    worker_logging()
    name = config[TRIAL_KEY]
    if name not in specs:
        raise ValueError(f"trial {name!r} of the restored experiment is not in the study any more")
    trial = TrialSpec.from_json(specs[name])
    layout = ExperimentLayout(**settings["layout"])
    session = settings.get("session")
    status = read_status_of(layout.trial_dir(name))
    if status and status.get("state") == "finished":
        # A finished trial is never trained again (e.g. its driver died after the last report).
        log.info("%s: already finished, not re-training", name)
        tune.report(dict(status.get("final", {})) | {"already_finished": 1.0})
        return
    if deterministic_failure(status) and session and status.get("session") == session:
        # A Tune retry within the same run: training again would end the same way.
        log.warning("%s: not retried (deterministic failure; --resume tries again)", name)
        raise TrialFailed(str(status.get("message")))
    s = trial.scaling
    storage_path, storage_fs = ray_storage(layout.train_storage)
    per_worker = {"CPU": float(s.cpus_per_worker)}
    if s.use_gpu:
        per_worker["GPU"] = float(s.gpus_per_worker)
    per_worker |= {k: float(v) for k, v in s.resources_per_worker.items()}  # e.g. a spot-GPU node label
    env, secrets = split_secrets(settings.get("env", {}))
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            TRIAL_KEY: trial.to_json(),
            "layout": settings["layout"],
            "driver_started": time.time(),
            "session": session,
            # an object reference: the values stay in Ray's memory (not in the run state or logs)
            "secrets": ray.put(secrets) if secrets else None,
        },
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.workers, use_gpu=s.use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=int(settings.get("worker_retries", 2))),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
            # Train's print patch tees prints into its logger when W&B wraps stdout: every
            # line would reach the console twice. Plain prints still reach the driver.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"} | env},
        ),
    )
    fit_started = time.time()
    try:
        trainer.fit()
    except Exception as exc:
        # A worker that failed with an exception recorded it itself (keep that message); one
        # that was killed could not: then the driver records the failure's own last line.
        status = read_status_of(layout.trial_dir(name))
        if not worker_reported(status, exc, since=fit_started):
            write_status(
                layout.trial_dir(name),
                "failed",
                failure_message(exc),
                extra={"metric": trial.dataset.headline_metric},
            )
        raise
    status = read_status_of(layout.trial_dir(name))
    if deterministic_failure(status) and float(status.get("updated", 0)) >= fit_started:
        raise TrialFailed(str(status.get("message")))


def dumps_specs(trials: list[TrialSpec]) -> dict[str, str]:
    """The study's specs as JSON by trial name (what :func:`run_trial` is handed)."""
    return {t.name: t.to_json() for t in trials}


__all__ = [
    "DETERMINISTIC",
    "FAULT_ENV",
    "NAN_ENV",
    "RESUMES_FILE",
    "TRIAL_KEY",
    "RayReporter",
    "TrialFailed",
    "dumps_specs",
    "failure_message",
    "forwarded_env",
    "run_trial",
    "split_secrets",
    "train_worker",
]
