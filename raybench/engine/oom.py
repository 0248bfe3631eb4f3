"""The batch fits the GPU it gets: an out-of-memory error in one of a run's first iterations
halves the micro-batch (doubling accumulation) and repeats the iteration, instead of failing
the trial.

The global batch, the data order and the random state of the repeated iteration are
unchanged, so the run computes what a run configured with the smaller micro-batch from the
start computes (``tests/engine/test_oom_fallback.py`` checks it bit for bit). On by default on
CUDA (the GPU the autoscaler hands out may be smaller than the one the study was sized on)
and with ``scaling.max_batch_per_worker: auto``. The choice is kept in the checkpoint, so a
resume does not run out of memory again to find it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from raybench.engine.checkpoint import capture_rng, restore_rng
from raybench.engine.distributed import any_worker, is_distributed
from raybench.engine.run import Run, batch_split
from raybench.study.spec import TrialSpec

#: The first iterations of a run (fresh or resumed) in which an out-of-memory error halves the
#: micro-batch instead of failing the trial: iteration 1 allocates activations and gradients,
#: iteration 2 the optimizer state, after that memory use is steady.
OOM_PROBE_ITERS = 3

Attempt = Callable[[Run, bool], tuple[list[str], torch.Tensor]]


def oom_fallback_enabled(trial: TrialSpec, device: torch.device) -> bool:
    """Whether an out-of-memory error in an early iteration halves the micro-batch (and doubles
    accumulation) instead of failing: ``scaling.max_batch_per_worker: auto``, and always on CUDA
    (the GPU the autoscaler hands out may be smaller than the one the study was sized on)."""
    return trial.scaling.max_batch_per_worker == "auto" or device.type == "cuda"


def in_oom_probe(run: Run, it: int) -> bool:
    """Whether iteration ``it`` runs under the out-of-memory guard."""
    return oom_fallback_enabled(run.trial, run.device) and it < run.start + OOM_PROBE_ITERS


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


def with_oom_fallback(run: Run, it: int, attempt: Attempt) -> tuple[list[str], torch.Tensor]:
    """``attempt(run, sync)`` (forward + backward of iteration ``it``), repeated with half the
    micro-batch while some worker runs out of memory.

    Every worker tries the iteration (no collective inside it), all agree whether one ran out
    of memory, and if so all halve the micro-batch and repeat the iteration from the same
    random state. Without a process group there is nothing to agree."""
    rng = capture_rng()
    while True:
        run.optimizer.zero_grad(set_to_none=True)
        oom = ""
        try:
            names, terms = attempt(run, not is_distributed())
        except torch.OutOfMemoryError as exc:
            oom = str(exc).split("\n", 1)[0][:300]
        if not any_worker(bool(oom), run.device):
            if is_distributed():
                all_reduce_gradients(run.trainable, run.device)
            return names, terms
        _halve_micro_batch(run, it, oom)
        restore_rng(rng)
        run.loaders.restart(it, run.accum, run.micro)


def _halve_micro_batch(run: Run, it: int, oom: str) -> None:
    """Free what the failed attempt held and halve the micro-batch (a clear error at 1 image).
    ``oom``: this worker's error line ("" when another worker ran out of memory)."""
    run.optimizer.zero_grad(set_to_none=True)
    run.loaders.stop()
    if run.device.type == "cuda":
        torch.cuda.empty_cache()
    where = "this worker" if oom else "another worker"
    if run.micro == 1:
        raise torch.OutOfMemoryError(
            f"{run.trial.name}: out of memory at iteration {it + 1} on {where} with a "
            f"micro-batch of 1 image ({oom or 'see that worker'}); nothing left to halve: "
            "use a GPU with more memory (scaling.resources_per_worker), recipes.*.amp: true, "
            "or a smaller input size"
        )
    old = run.micro
    run.micro, run.accum = batch_split(run.trial, run.world, old // 2)
    run.progress(
        f"out of memory at iteration {it + 1} ({where}) with micro-batch {old}: "
        f"micro-batch {run.micro} x {run.accum} accumulation steps from now on (global batch "
        f"{run.trial.recipe.batch_size}, data order and results as if configured so from the start)"
    )
    _tell_reporter(run, f"out of memory at iteration {it + 1} with micro-batch {old}")


def reuse_batch_choice(run: Run, state: dict[str, Any] | None) -> None:
    """On a resume: the micro-batch an out-of-memory error chose in the run the checkpoint came
    from (same global batch and data order; no second OOM to find it again)."""
    reused = state.get("oom_micro_batch") if state is not None else None
    usable = isinstance(reused, int) and 0 < reused < run.micro
    if not (usable and oom_fallback_enabled(run.trial, run.device)):
        return
    run.micro, run.accum = batch_split(run.trial, run.world, reused)
    run.progress(
        f"micro-batch {run.micro} x {run.accum} accumulation steps, "
        "as chosen before this resume (out of memory)"
    )
    _tell_reporter(run, "chosen before this resume (out of memory)")


def _tell_reporter(run: Run, reason: str) -> None:
    """The reporter's optional ``batch_choice(info)`` (Ray: status.json and W&B config)."""
    fn = getattr(run.reporter, "batch_choice", None)
    if callable(fn):
        info = {"micro_batch": run.micro, "accum": run.accum, "configured_micro_batch": run.planned_micro}
        fn(info | {"reason": reason})
