"""What one training run holds, and how it is put together before the first iteration.

:class:`Run` is the loop's state in one place (in the spirit of Detectron2's trainer
object): what :func:`build_run` made for the trial (task, data, model, optimizer, LR
schedule, AMP scaler, micro-batch split) and where the run stands (iterations done, the
loss window, the last metrics). The step functions of :mod:`raybench.engine.loop` and its
helpers (:mod:`~raybench.engine.steps`, :mod:`~raybench.engine.oom`,
:mod:`~raybench.engine.evaluate`, :mod:`~raybench.engine.resume`) read and update it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from raybench.engine.accel import configure_backends, prepare_model
from raybench.engine.checkpoint import CHECKPOINT_DIR, check_checkpoint_space, estimate_checkpoint_bytes
from raybench.engine.distributed import World, is_distributed
from raybench.engine.loaders import GlobalBatchStream, RunLoaders, trial_datasets
from raybench.engine.losses import LossTracker
from raybench.engine.progress import Progress
from raybench.engine.sinks import METRICS_FILE, JsonlReporter, LogReporter, MultiReporter, Reporter
from raybench.recipes import build_optimizer, build_scheduler, lr_factor
from raybench.study.spec import TrialSpec
from raybench.tasks import DatasetMeta, Task, build_task


def default_device(trial: TrialSpec, world: World) -> torch.device:
    """This worker's GPU (by local rank) when the trial asks for GPUs and has them, else CPU."""
    if trial.scaling.use_gpu and torch.cuda.is_available():
        index = world.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if trial.scaling.use_gpu:
        warnings.warn(
            f"{trial.name}: the trial asks for GPUs but none is visible; training on CPU", stacklevel=3
        )
    return torch.device("cpu")


def batch_split(trial: TrialSpec, world: World, cap: int | None = None) -> tuple[int, int]:
    """(micro-batch, accumulation) of this world, with the micro-batch capped at ``cap``;
    refuses a world whose size does not divide the global batch."""
    if trial.recipe.batch_size % world.size:
        raise ValueError(
            f"{trial.name}: global batch {trial.recipe.batch_size} does not split over {world.size} "
            "workers; choose a worker count that divides it"
        )
    scaling = dataclasses.replace(trial.scaling, workers=world.size)
    if cap is not None:
        scaling = dataclasses.replace(scaling, max_batch_per_worker=cap)
    return scaling.per_worker_batch(trial.recipe.batch_size)


@dataclass(eq=False)
class Run:
    """One run of :func:`raybench.engine.train`: what was built, and where it stands."""

    trial: TrialSpec
    out_dir: Path
    world: World
    device: torch.device
    progress: Progress
    reporter: Reporter | None
    task: Task
    datasets: tuple[Any, Any]  # (train, val); train already cut to the trial's fraction
    meta: DatasetMeta
    model: nn.Module
    compiled: list[nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    lr_factor: Callable[[int], float]
    amp_dtype: torch.dtype | None  # autocast dtype of the training step; None: fp32
    scaler: torch.amp.GradScaler | None  # fp16 loss scaling (GPUs without bf16)
    micro: int  # images per micro-batch on this worker (the OOM fallback may lower it)
    accum: int  # micro-batches per iteration
    planned_micro: int  # the micro-batch the study configures
    stream: GlobalBatchStream
    # Where the run stands (restored from a checkpoint on a resume).
    start: int = 0
    done: int = 0
    last_train: dict[str, float] = field(default_factory=dict)
    last_val: dict[str, float] = field(default_factory=dict)
    last_records: tuple[int, Any] | None = None  # (iteration, per-image records) of the last evaluation
    losses: LossTracker = field(init=False)  # queued loss terms, the logging window's meters
    # Set when training starts (:func:`start_training`).
    net: nn.Module = field(init=False)  # the model, DDP-wrapped with a process group
    trainable: list[nn.Parameter] = field(init=False, default_factory=list)
    sink: Reporter = field(init=False)  # metrics.jsonl, the log, the caller's reporter
    loaders: RunLoaders = field(init=False)
    window_start: float = 0.0  # the logging window: its training time and iterations
    window_iters: int = 0

    def __post_init__(self) -> None:
        self.net = self.model
        self.losses = LossTracker(self.trial.recipe.sync_period)

    @property
    def total(self) -> int:
        return self.trial.recipe.schedule.iterations

    @property
    def amp(self) -> bool:
        return self.amp_dtype is not None

    def final_metrics(self) -> dict[str, float]:
        """What ``train`` returns: the position and the last training and validation metrics."""
        return {"iter": self.done, "epoch": self.stream.epoch(self.done), **self.last_train, **self.last_val}


def build_run(
    trial: TrialSpec,
    out_dir: Path,
    world: World,
    device: torch.device,
    *,
    split: tuple[int, int],
    amp_dtype: torch.dtype | None,
    progress: Progress,
    reporter: Reporter | None,
    datasets: Mapping[str, Any] | None,
    task_wrapper: Callable[[Task], Task] | None,
) -> Run:
    """Task, data, model (on ``device``, compiled if asked), optimizer, LR schedule and AMP
    scaler of ``trial``, in this order (the global RNG is seeded before: every worker builds
    the same initial weights)."""
    recipe = trial.recipe
    task = build_task(trial)
    if task_wrapper is not None:
        task = task_wrapper(task)
    train_set, val_set = trial_datasets(trial, datasets)
    meta = DatasetMeta.of(train_set)
    configure_backends(device, autotune=task.cudnn_autotune())
    model = task.build_model(meta)
    compiled = task.compile_targets(model) if recipe.compile else []
    model = prepare_model(model, device, channels_last=recipe.channels_last, compile_modules=compiled)
    optimizer = build_optimizer(model, recipe.optimizer, backbone=task.backbone(model))
    if world.is_main:  # a full disk found before training, not at the first checkpoint
        check_checkpoint_space(out_dir, estimate_checkpoint_bytes(model, optimizer))
    scheduler = build_scheduler(optimizer, recipe.schedule)
    return Run(
        trial=trial,
        out_dir=out_dir,
        world=world,
        device=device,
        progress=progress,
        reporter=reporter,
        task=task,
        datasets=(train_set, val_set),
        meta=meta,
        model=model,
        compiled=compiled,
        optimizer=optimizer,
        scheduler=scheduler,
        lr_factor=lr_factor(recipe.schedule),
        amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
        micro=split[0],
        accum=split[1],
        planned_micro=split[0],
        stream=GlobalBatchStream(len(train_set), recipe.batch_size, trial.seed),
    )


def open_outputs(run: Run, *, resumed: bool) -> None:
    """Rank 0: the output folder (``trial.json``; a fresh start removes an older run's
    checkpoints, so a later resume can never pick one up) and ``metrics.jsonl`` (a resume drops
    the records after its checkpoint). Every rank: the sinks each report goes to."""
    trial, sinks = run.trial, []
    if run.world.is_main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        if not resumed:
            shutil.rmtree(run.out_dir / CHECKPOINT_DIR, ignore_errors=True)
        (run.out_dir / "trial.json").write_text(json.dumps(trial.to_dict() | {"name": trial.name}, indent=1))
        sinks.append(JsonlReporter(run.out_dir / METRICS_FILE, resume_at=run.start if resumed else None))
        if run.progress.enabled:
            sinks.append(LogReporter(run.progress.prefix))
    if run.reporter is not None:
        sinks.append(run.reporter)
    run.sink = MultiReporter(sinks)


def start_training(run: Run) -> None:
    """Wrap the model for DDP (with a process group), open the loaders at the run's first
    iteration, say what runs where, start the logging window's clock."""
    recipe, device = run.trial.recipe, run.device
    if is_distributed():
        run.net = DistributedDataParallel(
            run.model,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
            find_unused_parameters=run.task.ddp_find_unused_parameters,
        )
    run.loaders = RunLoaders(run.trial, run.task, run.stream, run.datasets, run.world, device)
    run.loaders.restart(run.start, run.accum, run.micro)
    run.trainable = [p for p in run.model.parameters() if p.requires_grad]
    n_all = sum(p.numel() for p in run.model.parameters())
    run.progress(
        f"{run.world.size} worker(s) x {run.accum} x {run.micro} images = global batch {recipe.batch_size}; "
        f"device {device}; {sum(p.numel() for p in run.trainable):,} of {n_all:,} parameters trained; "
        f"iterations {run.start}..{run.total}"
    )
    fast = [f"compiled {type(m).__name__}" for m in run.compiled]
    fast += ["channels_last"] if recipe.channels_last and device.type == "cuda" else []
    fast += [f"AMP {str(run.amp_dtype).removeprefix('torch.')}"] if run.amp else []
    run.progress("; ".join([*fast, f"losses read back every {recipe.sync_period} iteration(s)"]))
    run.window_start, run.window_iters = time.perf_counter(), 0
