"""The training loop: one function, with or without Ray, one worker or many.

:func:`train` is a plain iteration loop (in the spirit of torchvision's detection
references and Detectron2's ``TrainerBase.train``), read top to bottom as its steps:
restore (:mod:`~raybench.engine.resume`), build (:mod:`~raybench.engine.run`), then per
iteration one optimisation step with gradient accumulation (:mod:`~raybench.engine.steps`,
guarded by the out-of-memory fallback of :mod:`~raybench.engine.oom` at first); at a sync
point the losses are read back and checked (:mod:`~raybench.engine.losses`), and what is due
follows: a progress line and a report every ``log_period``, an evaluation
(:mod:`~raybench.engine.evaluate`) every ``eval_period``, an exact-resume checkpoint every
``checkpoint_period``. It knows nothing about tasks: the trial's
:class:`~raybench.tasks.Task` builds the model, the batches, the losses and the evaluator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raybench.engine.checkpoint import seed_everything
from raybench.engine.distributed import World, any_worker
from raybench.engine.evaluate import evaluate, evaluate_run
from raybench.engine.oom import reuse_batch_choice
from raybench.engine.progress import Progress
from raybench.engine.resume import find_resume_state, restore_run, save_run_checkpoint
from raybench.engine.run import Run, batch_split, build_run, default_device, open_outputs, start_training
from raybench.engine.sinks import Reporter, report_records, should_stop
from raybench.engine.steps import train_iteration, training_amp_dtype
from raybench.study.spec import TrialSpec
from raybench.tasks import Task

# Re-exported: `train` looks `training_amp_dtype` up here at each call (a test substitutes it).
__all__ = ["evaluate", "train", "training_amp_dtype"]


def train(
    trial: TrialSpec,
    out_dir: str | Path,
    *,
    reporter: Reporter | None = None,
    resume: bool = True,
    resume_from: str | Path | None = None,
    world: World | None = None,
    device: torch.device | str | None = None,
    datasets: Mapping[str, Any] | None = None,
    verbose: bool = True,
    task_wrapper: Callable[[Task], Task] | None = None,
) -> dict[str, float]:
    """Train ``trial`` to its last iteration; returns the final metrics.

    - ``out_dir``: ``metrics.jsonl`` (rank 0), ``trial.json`` and ``checkpoints/iter_*``.
    - ``resume``: continue from the newest checkpoint in ``out_dir`` if there is one;
      ``resume_from``: continue from this checkpoint folder instead (Ray hands one over).
    - ``reporter``: also receives every report (on every worker; the checkpoint folder on
      rank 0 only). Metrics always go to ``out_dir/metrics.jsonl``.
    - ``world``: rank / size (default: from torch.distributed, else 1 worker). With a
      process group the model is wrapped in DistributedDataParallel.
    - ``datasets``: ``{"train": ..., "val": ...}`` built elsewhere (with ``transforms=None``;
      the task's transforms are applied here), instead of the trial's own.
    - ``verbose``: rank 0 logs its progress (INFO; :mod:`raybench.engine.progress`), on stdout
      when nothing configured raybench's loggers; False: DEBUG only.
    - ``task_wrapper``: wraps the trial's task before use (the sweep's NaN drill,
      ``raybench.sweep.drills``); None: the task as built.
    """
    out_dir, world = Path(out_dir), world or World.current()
    split = batch_split(trial, world)  # refuses a world that does not divide the global batch
    device = torch.device(device) if device is not None else default_device(trial, world)
    progress = Progress(trial.name, enabled=verbose and world.is_main)
    with progress.console():
        checkpoint, state = find_resume_state(trial, out_dir, resume=resume, resume_from=resume_from)
        seed_everything(trial.seed)  # every worker builds the same initial weights
        run = build_run(
            trial,
            out_dir,
            world,
            device,
            split=split,
            amp_dtype=training_amp_dtype(trial.recipe.amp, device),
            progress=progress,
            reporter=reporter,
            datasets=datasets,
            task_wrapper=task_wrapper,
        )
        restore_run(run, state, checkpoint)
        open_outputs(run, resumed=state is not None)
        reuse_batch_choice(run, state)
        if run.start >= run.total:
            progress(f"already trained ({run.start}/{run.total} iterations)")
            return run.final_metrics()
        start_training(run)
        for it in range(run.start, run.total):
            lr = trial.recipe.optimizer.lr * run.lr_factor(it)
            names, terms = train_iteration(run, it)
            run.done, run.window_iters = it + 1, run.window_iters + 1
            due = sync_point(run, names, terms)
            if due is None:
                continue
            metrics: dict[str, float] = {"iter": run.done, "epoch": run.stream.epoch(run.done), "lr": lr}
            if due.log:
                metrics |= log_window(run, lr)
            if due.eval:
                metrics |= evaluate_run(run)
            if (due.final or due.stop) and run.last_records is not None:  # before the last checkpoint
                report_records(run.sink, trial.name, *run.last_records)
            saved = save_run_checkpoint(run) if due.checkpoint else None
            run.sink.report(metrics, saved)
            if due.stop and not due.final:
                progress(f"stopped by the reporter at iteration {run.done}")
                break
        return run.final_metrics()


@dataclass(frozen=True)
class Due:
    """What a sync point has to do."""

    log: bool
    eval: bool
    checkpoint: bool
    final: bool  # the last iteration
    stop: bool  # a reporter asked to stop (on some worker)


def sync_point(run: Run, names: list[str], terms: torch.Tensor) -> Due | None:
    """Queue iteration ``run.done``'s loss terms. At a log / eval / checkpoint boundary, or
    once ``sync_period`` iterations are queued, read them back (a NaN stops here, before any
    checkpoint) and agree with the other workers on whether to stop. Returns what is due;
    None between sync points and when nothing is."""
    recipe, done = run.trial.recipe, run.done
    final = done == run.total
    periods = (recipe.log_period, recipe.eval_period, recipe.checkpoint_period)
    run.losses.add(done, names, terms)
    if not (final or any(done % p == 0 for p in periods) or run.losses.due):
        return None
    run.losses.read_back()
    stop = any_worker(should_stop(run.reporter), run.device)
    due = Due(
        log=done % recipe.log_period == 0 or final or stop,
        eval=done % recipe.eval_period == 0 or final,
        checkpoint=done % recipe.checkpoint_period == 0 or final or stop,
        final=final,
        stop=stop,
    )
    return due if due.log or due.eval or due.checkpoint else None


def log_window(run: Run, lr: float) -> dict[str, float]:
    """Close the logging window: its mean loss terms (kept as ``run.last_train``), throughput
    and a progress line; returns the window's metrics."""
    means = run.losses.meters.means()
    elapsed = time.perf_counter() - run.window_start
    run.last_train = {"train/loss": sum(means.values()), **{f"train/{k}": v for k, v in means.items()}}
    run.last_train["lr"] = lr
    imgs_per_s = run.trial.recipe.batch_size * run.window_iters / max(elapsed, 1e-9)
    eta = elapsed / run.window_iters * (run.total - run.done)
    run.progress.window(run.done, run.total, means, lr, imgs_per_s, eta)
    run.losses.meters.reset()
    run.window_start, run.window_iters = time.perf_counter(), 0
    return {**run.last_train, "imgs_per_s": imgs_per_s}
