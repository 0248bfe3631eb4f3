"""Split policies: which items go to train and which to val, deterministically.

The rules reproduce the paper's counts (Table 1): ``ceil`` for a plain random split
(Severstal 6666 -> 1334 val), ``round half up`` for a stratified one (Rubber Rings 197 -> 39).
Every split is a pure function of the item keys and a seed, independent of listing order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from raybench.data.errors import DatasetFormatError

#: How many shared items an overlap error lists.
MAX_LISTED = 5


def n_val_ceil(n: int, val_fraction: float) -> int:
    """Validation count ``ceil(n * f)`` (sklearn's rule): 6666 -> 1334 as in the paper."""
    return min(n, math.ceil(round(n * val_fraction, 9)))


def random_split(keys: Sequence[str], val_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Deterministic random split of ``keys`` (order-independent: keys are sorted first).

    ``val = first ceil(n * val_fraction)`` of ``numpy.random.default_rng(seed).permutation``.
    """
    ordered = sorted(set(keys))
    perm = np.random.default_rng(seed).permutation(len(ordered))
    n_val = n_val_ceil(len(ordered), val_fraction)
    val = {ordered[i] for i in perm[:n_val]}
    return set(ordered) - val, val


def stratified_split(
    groups: dict[Any, Sequence[str]], val_fraction: float, seed: int
) -> tuple[set[str], set[str]]:
    """Per-group random split whose *total* is ``round_half_up(n * f)`` (197 -> 39).

    The total is apportioned to groups by largest remainder (ties: group order), so each
    group gets ``floor`` or ``ceil`` of its share. Groups are visited in the given order and
    each draws one permutation from a single ``default_rng(seed)``.
    """
    names = list(groups)
    sizes = [len(set(groups[g])) for g in names]
    total = math.floor(round(sum(sizes) * val_fraction, 9) + 0.5)
    quotas = [s * val_fraction for s in sizes]
    counts = [math.floor(round(q, 9)) for q in quotas]
    rest = total - sum(counts)
    order = sorted(range(len(names)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order:
        if rest <= 0:
            break
        if counts[i] < sizes[i]:
            counts[i] += 1
            rest -= 1
    rng = np.random.default_rng(seed)
    train: set[str] = set()
    val: set[str] = set()
    for g, k in zip(names, counts, strict=True):
        ordered = sorted(set(groups[g]))
        perm = rng.permutation(len(ordered))
        chosen = {ordered[i] for i in perm[:k]}
        val |= chosen
        train |= set(ordered) - chosen
    return train, val


def check_disjoint(splits: Mapping[str, Iterable[Any]], source: str) -> None:
    """Train and val must not share items (a leak inflates every val metric).

    ``source`` names the file(s) the split came from; the error lists the number of shared
    items and a few of them.
    """
    (a, items_a), (b, items_b) = list(splits.items())
    shared = sorted(set(items_a) & set(items_b), key=str)
    if not shared:
        return
    listed = ", ".join(str(x) for x in shared[:MAX_LISTED]) + (", ..." if len(shared) > MAX_LISTED else "")
    raise DatasetFormatError(
        f"{source}: {len(shared)} item(s) are in both {a} and {b} (train and val overlap): {listed}"
    )
