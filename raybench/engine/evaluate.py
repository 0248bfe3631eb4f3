"""Evaluation on the validation split: every worker predicts its shard, the task's evaluator
gathers all shards, every worker gets the same metrics.

Always in full precision, whatever the recipe's ``amp`` (which is for training): Detectron2
and Mask2Former evaluate without autocast, and the reported metrics must not depend on a
throughput option.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from raybench.engine.checkpoint import preserved_rng
from raybench.engine.distributed import gather_objects
from raybench.engine.run import Run
from raybench.tasks import DatasetMeta, Task


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

    Autocast is switched off explicitly, so even a caller inside an autocast region gets fp32
    predictions.

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


def evaluate_run(run: Run) -> dict[str, float]:
    """The run's evaluation at iteration ``run.done``: its metrics (kept as ``run.last_val``)
    and per-image records (``run.last_records``). It does not shift the training's random
    streams, and its time does not count against the training throughput."""
    start = time.perf_counter()
    kept: list[Any] = []
    with preserved_rng():
        run.last_val = evaluate(
            run.task, run.model, run.loaders.val_loader, run.meta, device=run.device, records=kept
        )
    if kept and kept[0] is not None:
        run.last_records = (run.done, kept[0])
    run.window_start += time.perf_counter() - start
    return run.last_val
