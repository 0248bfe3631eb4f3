"""One optimisation step: ``accum`` micro-batches forward and backward, then clip, optimizer
step and LR step (as torchvision's ``train_one_epoch`` does for one batch).

Each micro-batch's loss (a mean over its ``n`` images) is scaled by ``n * W / B`` before
``backward`` (``W`` workers, global batch ``B``); DistributedDataParallel averages over the
``W`` workers, so the gradient is the mean over the global batch whatever the split into
workers and micro-batches (docs/engine.md, "Cluster-shape invariance").
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel

from raybench.engine.oom import in_oom_probe, with_oom_fallback
from raybench.engine.run import Run
from raybench.recipes import clip_gradients


def training_amp_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the *training* step: bf16 (fp16 + loss scaling where the GPU has
    no bf16) on CUDA when the recipe asks for AMP; None (fp32) otherwise, and on CPU."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def forward_backward(run: Run, sync: bool) -> tuple[list[str], torch.Tensor]:
    """Forward + backward of one iteration's ``accum`` micro-batches; returns the loss term
    names and the terms (weighted, on the device). ``sync``: DDP reduces the gradients in
    the last backward (else every backward is ``no_sync`` and the caller reduces them)."""
    net, task, device, scaler = run.net, run.task, run.device, run.scaler
    terms: torch.Tensor | None = None
    names: list[str] = []
    ddp = isinstance(net, DistributedDataParallel)
    for m in range(run.accum):
        batch = next(run.loaders.batches)
        n = task.batch_size(batch)
        batch = task.to_device(batch, device)
        last = m == run.accum - 1
        no_sync = net.no_sync() if ddp and not (last and sync) else None
        # This micro-batch's share of the global batch; x world size because
        # DistributedDataParallel averages gradients over the workers.
        share = n * run.world.size / run.trial.recipe.batch_size
        with no_sync or contextlib.nullcontext():
            with torch.autocast(device.type, dtype=run.amp_dtype or torch.bfloat16, enabled=run.amp):
                losses = task.train_step(net, batch)
            loss = sum(losses.values()) * share
            (scaler.scale(loss) if scaler is not None else loss).backward()
        values = torch.stack([v.detach().to(torch.float64) for v in losses.values()]) * share
        terms = values if terms is None else terms + values
        names = list(losses)
    assert terms is not None
    return names, terms


def optimizer_step(run: Run) -> None:
    """Clip (the recipe's ``ClipSpec``), step the optimizer (through the fp16 scaler if any)
    and the LR schedule."""
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    clip_gradients(run.trainable, run.trial.recipe.clip_grad)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()


def train_iteration(run: Run, it: int) -> tuple[list[str], torch.Tensor]:
    """Iteration ``it`` (0-based): gradients of its global batch, then the optimizer and LR
    steps. In the first iterations of a run the out-of-memory fallback guards the forward
    and backward (:mod:`raybench.engine.oom`). Returns the loss term names and values."""
    run.net.train()
    if in_oom_probe(run, it):
        names, terms = with_oom_fallback(run, it, forward_backward)
    else:
        run.optimizer.zero_grad(set_to_none=True)
        names, terms = forward_backward(run, sync=True)
    optimizer_step(run)
    return names, terms
