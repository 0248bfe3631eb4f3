"""Detectron2 "Nx" schedule arithmetic (pure Python, shared by the study and the recipes).

"Rethinking ImageNet Pre-training" (He et al.) defines 1x = 90k iterations at batch 16,
steps at 60k/80k; 2x keeps the 2/3 and 8/9 fractions; longer schedules put the steps
60k and 20k iterations before the end. We keep those *fractions* and scale them to the
study's iteration count, so a toy smoke run decays at the same relative points.
"""

from __future__ import annotations

import re

ONE_X = 90_000


def parse_length(length: str) -> float:
    """``"3x"`` -> 3.0; a clear ValueError for anything else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*[xX]\s*", str(length))
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"schedule.length must look like '1x', '3x' or '6x', got {length!r}")
    return float(match.group(1))


def step_fractions(length: str) -> tuple[float, float]:
    """Where the two x0.1 steps fall, as fractions of the schedule."""
    n = parse_length(length)
    total = n * ONE_X
    if n <= 2:
        return 2 / 3, 8 / 9
    return (total - 60_000) / total, (total - 20_000) / total


def paper_iterations(length: str) -> int:
    """Iterations of an Nx schedule at the paper's batch 16."""
    return int(round(parse_length(length) * ONE_X))


def milestones(iterations: int, length: str | None, steps: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Step iterations: explicit ``steps`` win; else the scaled Nx fractions; else none."""
    if steps:
        return tuple(sorted(steps))
    if length is None:
        return ()
    out = []
    for frac in step_fractions(length):
        it = min(max(1, int(round(frac * iterations))), max(1, iterations - 1))
        if not out or it > out[-1]:
            out.append(it)
    return tuple(out)
