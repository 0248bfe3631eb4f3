"""The label-efficiency axis: a trial's training set at ``train_fraction`` is a nested,
class-stratified subset of the full split (see :func:`subset_order` for the order and why).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

#: Second word of the subset generator's seed ``[trial seed, SUBSET_STREAM]``: the subset is
#: drawn from its own stream, so it does not move the trial's other random numbers.
SUBSET_STREAM = 0x5B5E7


def subset_order(classes: Sequence[Sequence[int]], seed: int) -> list[int]:
    """Every training item once, in the order the label-efficiency subsets take them: a
    fraction ``f`` of the split is the first ``round(f * N)`` items (so the subsets are nested).

    Why this order: stratification by the set of classes each image shows keeps rare classes
    and multi-class images at their share at every fraction; a single order makes nesting
    exact (the items of 10 % are also in 25 %, whatever the sizes).

    1. *Coverage first*: for each class present (rarest first, ties by id), unless an earlier
       pick already shows it, the first image of step 2's order that shows it. A subset of at
       least this many images (at most one per class) holds every class of the split.
    2. *Systematic stratified order* of the rest: images are grouped by their class set (the
       empty set too); in a stratum of ``n`` images shuffled by the generator, the ``k``-th gets
       the key ``(k + u) / n`` with one ``u ~ U[0, 1)`` per stratum; all images sorted by key
       (ties: stratum order, then rank). Any prefix then holds ``floor`` or ``ceil`` of
       ``f x n`` of every stratum.

    Deterministic: one ``numpy.random.default_rng([seed, SUBSET_STREAM])``, strata in sorted
    order of their class tuples.
    """
    rng = np.random.default_rng([int(seed), SUBSET_STREAM])
    strata: dict[tuple[int, ...], list[int]] = {}
    for i, cls in enumerate(classes):
        strata.setdefault(tuple(sorted({int(c) for c in cls})), []).append(i)
    keyed: list[tuple[float, int, int, int]] = []
    for s, key in enumerate(sorted(strata)):
        members = strata[key]
        perm = rng.permutation(len(members))
        u = float(rng.random())
        keyed += [((k + u) / len(members), s, k, members[j]) for k, j in enumerate(perm)]
    order = [item for *_, item in sorted(keyed)]
    counts: dict[int, int] = {}
    for cls in strata:
        for c in cls:
            counts[c] = counts.get(c, 0) + len(strata[cls])
    first: list[int] = []
    covered: set[int] = set()
    sets = [set(int(c) for c in cls) for cls in classes]
    for c in sorted(counts, key=lambda c: (counts[c], c)):
        if c in covered:
            continue
        pick = next(i for i in order if c in sets[i])
        first.append(pick)
        covered |= sets[pick]
    chosen = set(first)
    return first + [i for i in order if i not in chosen]


def subset_size(num_items: int, fraction: float) -> int:
    """``round(fraction x num_items)`` (halves up), at least 1."""
    return max(1, min(num_items, math.floor(fraction * num_items + 0.5)))


def fraction_indices(classes: Sequence[Sequence[int]], fraction: float, seed: int) -> list[int]:
    """The dataset indices (ascending) of the ``fraction`` subset; see :func:`subset_order`."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"a training fraction must be in (0, 1], got {fraction!r}")
    n = len(classes)
    if fraction == 1.0:
        return list(range(n))
    return sorted(subset_order(classes, seed)[: subset_size(n, fraction)])


class FractionSubset(Dataset):
    """Items ``indices`` of ``dataset``, which otherwise looks like ``dataset`` (``task``,
    ``num_classes``, ``class_names``, ... are its own), so the model is built for the same
    classes whatever the fraction."""

    def __init__(self, dataset: Any, indices: Sequence[int], fraction: float) -> None:
        self.dataset, self.indices, self.fraction = dataset, list(indices), float(fraction)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.indices[i]]

    def image_classes(self, i: int) -> list[int]:
        return self.dataset.image_classes(self.indices[i])

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "indices", "fraction") or name.startswith("__"):
            raise AttributeError(name)  # not set yet (unpickling): never recurse
        return getattr(self.dataset, name)


def fraction_subset(dataset: Any, fraction: float, seed: int) -> Any:
    """The trial's training set: ``dataset`` itself at 1.0, else its nested, class-stratified
    ``fraction`` subset (:func:`subset_order`; reads ``image_classes(i)``, no image decoded).

    The recipe does not change with the fraction (same iterations, same global batch): a
    smaller subset is seen for more epochs. That keeps the axis free of new hyper-parameters.
    """
    if fraction == 1.0:
        return dataset
    if not hasattr(dataset, "image_classes"):
        raise TypeError(
            f"train_fraction {fraction:g} needs the training set's image_classes(i) (for the "
            f"stratified subset); {type(dataset).__name__} has none"
        )
    classes = [dataset.image_classes(i) for i in range(len(dataset))]
    return FractionSubset(dataset, fraction_indices(classes, fraction, seed), fraction)
