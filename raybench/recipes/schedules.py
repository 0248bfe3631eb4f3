"""Iteration-based LR schedules: linear warm-up x (multistep | poly | constant), as a LambdaLR.

The factor multiplies each parameter group's own LR (so backbone multipliers and layer
decay are kept). It follows Detectron2's ``WarmupMultiStepLR`` / ``WarmupPolyLR``:

- warm-up (iterations ``0 .. warmup_iters-1``): ``warmup_factor * (1 - a) + a`` with
  ``a = it / warmup_iters``, multiplied into the main schedule;
- multistep: ``gamma ** (number of milestones <= it)``, milestones from
  :func:`raybench.study.schedule.milestones` (explicit steps, else the scaled Nx steps);
- poly: ``(1 - it / iterations) ** power``;
- constant: 1.

Iteration ``it`` is the number of optimizer steps already taken (0 for the first step).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

from raybench.study.schedule import milestones
from raybench.study.spec import ScheduleSpec


def lr_factor(spec: ScheduleSpec) -> Callable[[int], float]:
    """The schedule as a plain function of the iteration (a closure: checkpoints stay plain)."""
    total = spec.iterations
    steps = milestones(total, spec.length, spec.steps) if spec.name == "multistep" else ()
    warmup = min(spec.warmup_iters, total)
    if spec.name not in ("multistep", "poly", "constant"):
        raise ValueError(f"unknown schedule {spec.name!r}; expected multistep, poly or constant")

    def factor(it: int) -> float:
        if spec.name == "multistep":
            value = spec.gamma ** bisect.bisect_right(steps, it)
        elif spec.name == "poly":
            value = (1.0 - min(it, total) / total) ** spec.power
        else:
            value = 1.0
        if it < warmup:
            alpha = it / warmup
            value *= spec.warmup_factor * (1.0 - alpha) + alpha
        return value

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, spec: ScheduleSpec) -> LambdaLR:
    """A ``LambdaLR`` stepped once per iteration (after ``optimizer.step()``)."""
    return LambdaLR(optimizer, lr_factor(spec))
