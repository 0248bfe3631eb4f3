"""The training loop: one function, with or without Ray, one worker or many.

:func:`train` is a plain iteration loop (in the spirit of torchvision's detection
references): per iteration, ``accum`` micro-batches -> losses -> backward (scaled so
the gradient is the mean over the *global* batch) -> clip -> optimizer step -> LR step;
every ``log_period`` iterations a progress line and a report, every ``eval_period`` an
evaluation on the validation split, every ``checkpoint_period`` an exact-resume
checkpoint. It knows nothing about tasks: the trial's :class:`~raybench.tasks.Task` builds
the model, the batches, the losses and the evaluator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from raybench.engine.accel import (
    LossBuffer,
    configure_backends,
    loader_options,
    prepare_model,
)
from raybench.engine.checkpoint import (
    CHECKPOINT_DIR,
    FORMAT,
    capture_rng,
    check_checkpoint_space,
    estimate_checkpoint_bytes,
    latest_checkpoint,
    load_checkpoint,
    preserved_rng,
    restore_rng,
    save_checkpoint,
    seed_everything,
)
from raybench.engine.data import (
    BatchTrace,
    GlobalBatchStream,
    SeededItems,
    Shard,
    StreamBatchSampler,
    ensure_dataset,
    fraction_subset,
    seed_worker,
)
from raybench.engine.distributed import (
    World,
    any_worker,
    gather_objects,
    is_distributed,
)
from raybench.engine.reporting import (
    ConsoleReporter,
    JsonlReporter,
    MultiReporter,
    Reporter,
    report_records,
    should_stop,
)
from raybench.errors import ResumeMismatchError
from raybench.recipes import build_optimizer, build_scheduler, clip_gradients, lr_factor
from raybench.study.spec import TrialSpec
from raybench.tasks import DatasetMeta, Task, build_task

METRICS_FILE = "metrics.jsonl"
#: Checkpoints kept on disk (the newest ones); Ray keeps its own copies.
KEEP_CHECKPOINTS = 2
#: The first iterations of a run (fresh or resumed) in which an out-of-memory error halves the
#: micro-batch instead of failing the trial: iteration 1 allocates activations and gradients,
#: iteration 2 the optimizer state, after that memory use is steady.
OOM_PROBE_ITERS = 3


class _Meters:
    """Per-term loss sums over the current logging window (checkpointed, for exact resume)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.iters = 0

    def add(self, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.iters += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.iters) for k, v in self.sums.items()}

    def reset(self) -> None:
        self.sums, self.iters = {}, 0

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "iters": self.iters}

    def load(self, state: Mapping[str, Any]) -> None:
        self.sums, self.iters = {k: float(v) for k, v in state["sums"].items()}, int(state["iters"])


def default_device(trial: TrialSpec, world: World) -> torch.device:
    """This worker's GPU (by local rank) when the trial asks for GPUs and has them, else CPU."""
    if trial.scaling.use_gpu and torch.cuda.is_available():
        index = world.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if trial.scaling.use_gpu:
        warnings.warn(
            f"{trial.name}: the trial asks for GPUs but none is visible; training on CPU", stacklevel=2
        )
    return torch.device("cpu")


def build_datasets(trial: TrialSpec) -> tuple[Any, Any]:
    """(train, val) datasets of the trial, untransformed (the task's transforms come later)."""
    from raybench.data import build_dataset

    root = ensure_dataset(trial.dataset)
    opts = dict(trial.dataset.options)
    fmt = trial.dataset.format
    return build_dataset(fmt, root, "train", **opts), build_dataset(fmt, root, "val", **opts)


def _derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint32)[0])


def _comparable(trial_json: str) -> dict[str, Any]:
    """The spec minus what may change on a resume without changing the trial (resources, data location)."""
    d = json.loads(trial_json)
    d.pop("scaling", None)
    d.get("dataset", {}).pop("root", None)
    return d


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def oom_fallback_enabled(trial: TrialSpec, device: torch.device) -> bool:
    """Whether an out-of-memory error in an early iteration halves the micro-batch (and doubles
    accumulation) instead of failing: ``scaling.max_batch_per_worker: auto``, and always on CUDA
    (the GPU the autoscaler hands out may be smaller than the one the study was sized on)."""
    return trial.scaling.max_batch_per_worker == "auto" or device.type == "cuda"


def _split(trial: TrialSpec, world: World, cap: int | None = None) -> tuple[int, int]:
    """(micro-batch, accumulation) of this world, with the micro-batch capped at ``cap``."""
    scaling = dataclasses.replace(trial.scaling, workers=world.size)
    if cap is not None:
        scaling = dataclasses.replace(scaling, max_batch_per_worker=cap)
    return scaling.per_worker_batch(trial.recipe.batch_size)


def all_reduce_gradients(params: list[nn.Parameter], device: torch.device) -> None:
    """Average the gradients over the workers as DistributedDataParallel does (each divided by
    the world size, then summed), for an iteration run under ``no_sync`` (the OOM guard).
    A parameter without a gradient on some worker counts zeros there; one without a gradient on
    every worker keeps none (as DDP leaves globally unused parameters)."""
    import torch.distributed as dist

    size = dist.get_world_size()
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    for p, any_has in zip(params, has.tolist()):
        if not any_has:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.div_(size)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def _batch_choice(reporter: Reporter | None, info: dict[str, Any]) -> None:
    """Tell the reporter's optional ``batch_choice(info)`` (Ray: status.json and W&B config)."""
    fn = getattr(reporter, "batch_choice", None)
    if callable(fn):
        fn(dict(info))


def training_amp_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the *training* step: bf16 (fp16 + loss scaling where the GPU has
    no bf16) on CUDA when the recipe asks for AMP; None (fp32) otherwise, and on CPU."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def evaluate(
    task: Task,
    model: nn.Module,
    loader: DataLoader,
    meta: DatasetMeta,
    *,
    device: torch.device,
    gather: Any = gather_objects,
    records: list[Any] | None = None,
) -> dict[str, float]:
    """Predict every batch of ``loader`` (this worker's shard) and compute metrics over all workers.

    Always in full precision, whatever the recipe's ``amp`` (which is for training): Detectron2
    and Mask2Former evaluate without autocast, and the reported metrics must not depend on a
    throughput option. Autocast is switched off explicitly, so even a caller inside an
    autocast region gets fp32 predictions.

    ``records``: if given, the evaluator's per-image records (its optional ``records()``, all
    workers) are appended to it, for bootstrap intervals."""
    evaluator = task.build_evaluator(meta, gather)
    was_training = model.training
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        for batch in loader:
            task.evaluate_step(model, task.to_device(batch, device), evaluator)
    model.train(was_training)
    metrics = evaluator.evaluate()
    if records is not None:
        fn = getattr(evaluator, "records", None)
        records.append(fn() if callable(fn) else None)
    return metrics


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
      rank 0 only). Metrics always go to ``out_dir/metrics.jsonl`` and the console too.
    - ``world``: rank / size (default: from torch.distributed, else 1 worker). With a
      process group the model is wrapped in DistributedDataParallel.
    - ``datasets``: ``{"train": ..., "val": ...}`` built elsewhere (with ``transforms=None``;
      the task's transforms are applied here), instead of the trial's own.
    - ``task_wrapper``: wraps the trial's task before use (the sweep's NaN drill,
      ``raybench.sweep.drills``); None: the task as built.
    """
    out_dir = Path(out_dir)
    world = world or World.current()
    recipe, schedule = trial.recipe, trial.recipe.schedule
    total, global_batch = schedule.iterations, recipe.batch_size
    if global_batch % world.size:
        raise ValueError(
            f"{trial.name}: global batch {global_batch} does not split over {world.size} workers; "
            "choose a worker count that divides it"
        )
    micro, accum = _split(trial, world)
    planned_micro = micro  # as the study configures it; the OOM fallback may lower `micro`
    device = torch.device(device) if device is not None else default_device(trial, world)
    main = world.is_main

    def log(message: str) -> None:
        if verbose and main:
            print(f"[{trial.name}] {message}", flush=True)

    checkpoint_path = Path(resume_from) if resume_from else (latest_checkpoint(out_dir) if resume else None)
    state = load_checkpoint(checkpoint_path) if checkpoint_path else None
    if state is not None and _comparable(state["trial"]) != _comparable(trial.to_json()):
        raise ResumeMismatchError(
            f"checkpoint {checkpoint_path} was written by a different trial spec "
            f"({state.get('trial_name')!r}); refusing to resume {trial.name!r} from it "
            "(use another output folder: `raybench train --out`, `raybench run --experiment`; "
            "or start over: drop --resume, resume=False in Python)"
        )

    # Model and optimizer: every worker builds the same initial weights from the same seed.
    seed_everything(trial.seed)
    task = build_task(trial)
    if task_wrapper is not None:
        task = task_wrapper(task)
    if datasets is not None:
        train_set, val_set = datasets["train"], datasets["val"]
    else:
        train_set, val_set = build_datasets(trial)
    train_set = fraction_subset(train_set, trial.train_fraction, trial.seed)  # label-efficiency axis
    meta = DatasetMeta.of(train_set)
    configure_backends(device, autotune=task.cudnn_autotune())
    model = task.build_model(meta)
    compiled = task.compile_targets(model) if recipe.compile else []
    model = prepare_model(model, device, channels_last=recipe.channels_last, compile_modules=compiled)
    optimizer = build_optimizer(model, recipe.optimizer, backbone=task.backbone(model))
    if main:  # a full disk found before training, not at the first checkpoint
        check_checkpoint_space(out_dir, estimate_checkpoint_bytes(model, optimizer))
    scheduler = build_scheduler(optimizer, schedule)
    factor = lr_factor(schedule)
    amp_dtype = training_amp_dtype(recipe.amp, device)
    amp = amp_dtype is not None
    scaler = None
    if amp_dtype == torch.float16:
        scaler = torch.amp.GradScaler("cuda")

    meters = _Meters()
    start = 0
    last_train: dict[str, float] = {}
    last_val: dict[str, float] = {}
    last_records: tuple[int, Any] | None = None  # (iteration, per-image records) of the last evaluation
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        meters.load(state["meters"])
        start = int(state["iteration"])
        last_train, last_val = dict(state["train_metrics"]), dict(state["val_metrics"])
        rngs = state["rng"]
        if len(rngs) == world.size:
            restore_rng(rngs[world.rank])
        else:
            warnings.warn(
                f"{trial.name}: checkpoint from {len(rngs)} worker(s) resumed on {world.size}: "
                "data order and weights carry over exactly, per-worker random streams are re-seeded",
                stacklevel=2,
            )
            seed_everything(_derived_seed(trial.seed, world.rank, start))
        log(f"resuming from {checkpoint_path} at iteration {start}")
    elif world.rank > 0:
        seed_everything(_derived_seed(trial.seed, world.rank))  # own stream (e.g. RPN sampling)

    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if state is None:  # a fresh start: an older run's checkpoints must not be resumed later
            shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
        (out_dir / "trial.json").write_text(json.dumps(trial.to_dict() | {"name": trial.name}, indent=1))
    sinks: list[Reporter] = []
    if main:
        sinks.append(JsonlReporter(out_dir / METRICS_FILE, resume_at=start if state is not None else None))
        if verbose:
            sinks.append(ConsoleReporter(f"[{trial.name}] "))
    if reporter is not None:
        sinks.append(reporter)
    sink = MultiReporter(sinks)

    def final_metrics(done: int) -> dict[str, float]:
        return {"iter": done, "epoch": stream.epoch(done), **last_train, **last_val}

    adaptive = oom_fallback_enabled(trial, device)
    reused = state.get("oom_micro_batch") if state is not None else None
    if adaptive and isinstance(reused, int) and 0 < reused < micro:
        # The run this checkpoint came from ran out of memory at a larger micro-batch: keep its
        # choice (same global batch and data order; no second OOM to find it again).
        micro, accum = _split(trial, world, reused)
        log(f"micro-batch {micro} x {accum} accumulation steps, as chosen before this resume (out of memory)")
        _batch_choice(
            reporter,
            {
                "micro_batch": micro,
                "accum": accum,
                "configured_micro_batch": planned_micro,
                "reason": "chosen before this resume (out of memory)",
            },
        )

    stream = GlobalBatchStream(len(train_set), global_batch, trial.seed)
    if start >= total:
        log(f"already trained ({start}/{total} iterations)")
        return final_metrics(start)

    net: nn.Module = model
    if is_distributed():
        net = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
            find_unused_parameters=task.ddp_find_unused_parameters,
        )

    generator = torch.Generator()
    train_items = SeededItems(train_set, task.transforms("train", generator), generator, trial.seed)

    def train_loader_from(first: int, accum: int) -> DataLoader:
        """Micro-batches of iterations ``first..total-1``: a pure function of the iteration
        (stream positions, per-sample seeds), so a loader rebuilt at any iteration continues
        the same data."""
        return DataLoader(
            train_items,
            batch_sampler=StreamBatchSampler(
                stream, first, total, world.rank, world.size, accum, trace=BatchTrace.from_env(world.rank)
            ),
            collate_fn=task.collate,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(_derived_seed(trial.seed, world.rank, first)),
            **loader_options(recipe.loader_workers, device),
        )

    def val_loader_of(micro: int) -> DataLoader:
        return DataLoader(
            Shard(val_set, world.rank, world.size, task.transforms("val", torch.Generator())),
            batch_size=micro,
            shuffle=False,
            collate_fn=task.collate,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(trial.seed),
            **loader_options(recipe.loader_workers, device),
        )

    train_loader, val_loader = train_loader_from(start, accum), val_loader_of(micro)

    trainable = [p for p in model.parameters() if p.requires_grad]
    n_all = sum(p.numel() for p in model.parameters())
    log(
        f"{world.size} worker(s) x {accum} x {micro} images = global batch {global_batch}; "
        f"device {device}; {sum(p.numel() for p in trainable):,} of {n_all:,} parameters trained; "
        f"iterations {start}..{total}"
    )

    fast = [f"compiled {type(m).__name__}" for m in compiled]
    fast += ["channels_last"] if recipe.channels_last and device.type == "cuda" else []
    fast += [f"AMP {str(amp_dtype).removeprefix('torch.')}"] if amp else []
    log("; ".join([*fast, f"losses read back every {recipe.sync_period} iteration(s)"]))

    def micro_batches(data_iter: Any, accum: int, sync: bool) -> tuple[list[str], torch.Tensor]:
        """Forward + backward of one iteration's ``accum`` micro-batches; returns the loss term
        names and the terms (weighted, on the device). ``sync``: DDP reduces the gradients in
        the last backward (else every backward is ``no_sync`` and the caller reduces them)."""
        terms: torch.Tensor | None = None
        names: list[str] = []
        ddp = isinstance(net, DistributedDataParallel)
        for m in range(accum):
            batch = next(data_iter)
            n = task.batch_size(batch)
            batch = task.to_device(batch, device)
            last = m == accum - 1
            no_sync = net.no_sync() if ddp and not (last and sync) else None
            # This micro-batch's share of the global batch; x world size because
            # DistributedDataParallel averages gradients over the workers.
            share = n * world.size / global_batch
            with no_sync or contextlib.nullcontext():
                with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp):
                    losses = task.train_step(net, batch)
                loss = sum(losses.values()) * share
                (scaler.scale(loss) if scaler is not None else loss).backward()
            values = torch.stack([v.detach().to(torch.float64) for v in losses.values()]) * share
            terms = values if terms is None else terms + values
            names = list(losses)
        assert terms is not None
        return names, terms

    data_iter = iter(train_loader)
    window_start, window_iters = time.perf_counter(), 0
    done = start
    pending = LossBuffer(recipe.sync_period)
    for it in range(start, total):
        net.train()
        lr_now = recipe.optimizer.lr * factor(it)
        if not (adaptive and it < start + OOM_PROBE_ITERS):
            optimizer.zero_grad(set_to_none=True)
            names, terms = micro_batches(data_iter, accum, sync=True)
        else:
            # Out-of-memory guard: every worker tries the iteration (no collective inside it),
            # all agree whether one ran out of memory, and if so all halve the micro-batch and
            # repeat the iteration from the same random state: what a run configured with that
            # micro-batch from the start computes. Without a process group there is nothing to agree.
            rng = capture_rng()
            while True:
                optimizer.zero_grad(set_to_none=True)
                oom = ""
                try:
                    names, terms = micro_batches(data_iter, accum, sync=not is_distributed())
                except torch.OutOfMemoryError as exc:
                    oom = str(exc).split("\n", 1)[0][:300]
                if not any_worker(bool(oom), device):
                    if is_distributed():
                        all_reduce_gradients(trainable, device)
                    break
                optimizer.zero_grad(set_to_none=True)
                del data_iter
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                where = "this worker" if oom else "another worker"
                if micro == 1:
                    raise torch.OutOfMemoryError(
                        f"{trial.name}: out of memory at iteration {it + 1} on {where} with a "
                        f"micro-batch of 1 image ({oom or 'see that worker'}); nothing left to halve: "
                        "use a GPU with more memory (scaling.resources_per_worker), recipes.*.amp: true, "
                        "or a smaller input size"
                    )
                old = micro
                micro, accum = _split(trial, world, micro // 2)
                log(
                    f"out of memory at iteration {it + 1} ({where}) with micro-batch {old}: "
                    f"micro-batch {micro} x {accum} accumulation steps from now on (global batch "
                    f"{global_batch}, data order and results as if configured so from the start)"
                )
                _batch_choice(
                    reporter,
                    {
                        "micro_batch": micro,
                        "accum": accum,
                        "configured_micro_batch": planned_micro,
                        "reason": f"out of memory at iteration {it + 1} with micro-batch {old}",
                    },
                )
                restore_rng(rng)
                data_iter = iter(train_loader_from(it, accum))
                val_loader = val_loader_of(micro)
        if scaler is not None:
            scaler.unscale_(optimizer)
        clip_gradients(trainable, recipe.clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        done, window_iters = it + 1, window_iters + 1

        final = done == total
        boundary = done % recipe.log_period == 0 or done % recipe.eval_period == 0
        boundary = boundary or done % recipe.checkpoint_period == 0 or final
        for _, named in pending.add(done, names, terms):
            meters.add(named)
        if not (boundary or pending.due):
            continue
        # A sync point: read the losses back (a NaN stops here, before any checkpoint) and
        # agree with the other workers on whether to stop.
        for _, named in pending.flush():
            meters.add(named)
        stop = any_worker(should_stop(reporter), device)
        do_log = done % recipe.log_period == 0 or final or stop
        do_eval = done % recipe.eval_period == 0 or final
        do_ckpt = done % recipe.checkpoint_period == 0 or final or stop
        if not (do_log or do_eval or do_ckpt):
            continue

        metrics: dict[str, float] = {"iter": done, "epoch": stream.epoch(done), "lr": lr_now}
        if do_log:
            means = meters.means()
            elapsed = time.perf_counter() - window_start
            last_train = {"train/loss": sum(means.values()), **{f"train/{k}": v for k, v in means.items()}}
            last_train["lr"] = lr_now
            metrics.update(last_train)
            metrics["imgs_per_s"] = global_batch * window_iters / max(elapsed, 1e-9)
            eta = elapsed / window_iters * (total - done)
            terms = ", ".join(f"{k} {v:.3f}" for k, v in means.items())
            log(
                f"iter {done}/{total}  loss {last_train['train/loss']:.4f} ({terms})  lr {lr_now:.3g}  "
                f"{metrics['imgs_per_s']:.1f} img/s  eta {_format_eta(eta)}"
            )
            meters.reset()
            window_start, window_iters = time.perf_counter(), 0
        if do_eval:
            eval_start = time.perf_counter()
            kept: list[Any] = []
            with preserved_rng():  # evaluation must not shift the training's random streams
                last_val = evaluate(task, model, val_loader, meta, device=device, records=kept)
            last_records = (done, kept[0]) if kept and kept[0] is not None else last_records
            metrics.update(last_val)
            window_start += time.perf_counter() - eval_start  # throughput counts training only
        if (final or stop) and last_records is not None:  # the final evaluation's, before its checkpoint
            report_records(sink, trial.name, *last_records)
        saved: Path | None = None
        if do_ckpt:
            rng_states = gather_objects(capture_rng())
            if main:
                epoch, index = stream.position(done)
                saved = save_checkpoint(
                    out_dir,
                    done,
                    {
                        "format": FORMAT,
                        "trial": trial.to_json(),
                        "trial_name": trial.name,
                        "iteration": done,
                        "epoch": epoch,
                        "index_in_epoch": index,
                        "world_size": world.size,
                        # a micro-batch the OOM fallback chose, reused on resume (None: as configured)
                        "oom_micro_batch": micro if micro < planned_micro else None,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict() if scaler is not None else None,
                        "rng": rng_states,
                        "meters": meters.state(),
                        "train_metrics": last_train,
                        "val_metrics": last_val,
                    },
                    keep=KEEP_CHECKPOINTS,
                )
        sink.report(metrics, saved)
        if stop and not final:
            log(f"stopped by the reporter at iteration {done}")
            break
    return final_metrics(done)
