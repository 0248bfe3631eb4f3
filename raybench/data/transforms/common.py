"""What every transform shares: the target type and the seeded draws.

Randomness comes from torch (``generator`` or, by default, the global RNG that DataLoader
worker seeding controls), so a pipeline is reproducible given a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Target = dict[str, Any]


def rand(generator: torch.Generator | None) -> float:
    """Uniform float in ``[0, 1)``."""
    return float(torch.rand((), generator=generator))


def randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[low, high]`` (inclusive)."""
    if high <= low:
        return low
    return int(torch.randint(low, high + 1, (), generator=generator))


def as_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` from one int (square) or a pair."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)
