"""The training data order: one deterministic stream of *global* batches, cut into worker shares.

Why: the global batch is part of the protocol, so what a trial sees must not depend on how
many workers run it. The stream is a concatenation of per-epoch permutations (epoch ``e``
is ``default_rng([seed, e]).permutation(N)``); global batch ``i`` is stream positions
``i*B .. i*B+B-1``. Worker ``r`` of ``W`` takes the contiguous share ``r*B/W ..`` of each
global batch and cuts it into ``accum`` micro-batches. Each sample's augmentation is drawn
from a generator seeded by ``(seed, stream position)``, so a sample is augmented the same
way whichever worker or loader process reads it, and the data position after ``i``
iterations is a pure function of ``i`` (resume needs nothing else).
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from raybench.study.spec import DatasetSpec
from raybench.tasks.base import Transform


class GlobalBatchStream:
    """Global batch ``i`` of ``batch_size`` (stream position, dataset index) pairs."""

    def __init__(self, num_items: int, batch_size: int, seed: int) -> None:
        if num_items <= 0:
            raise ValueError("the training set is empty")
        self.num_items, self.batch_size, self.seed = int(num_items), int(batch_size), int(seed)
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
            self._perms = {epoch: perm, **{e: p for e, p in self._perms.items() if e == epoch - 1}}
        return perm

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        start = iteration * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            epoch, k = divmod(pos, self.num_items)
            out.append((pos, int(self.permutation(epoch)[k])))
        return out

    def share(self, iteration: int, rank: int, world: int) -> list[tuple[int, int]]:
        """Worker ``rank``'s contiguous share of global batch ``iteration``."""
        per = self.batch_size // world
        return self.batch(iteration)[rank * per : (rank + 1) * per]

    def position(self, iterations_done: int) -> tuple[int, int]:
        """(epoch, index within the epoch) of the next sample after ``iterations_done``."""
        return divmod(iterations_done * self.batch_size, self.num_items)

    def epoch(self, iterations_done: int) -> float:
        """Epochs seen after ``iterations_done`` iterations (fractional)."""
        return iterations_done * self.batch_size / self.num_items


BATCH_TRACE_ENV = "RAYBENCH_BATCH_TRACE"


class BatchTrace:
    """Opt-in record of the samples each worker is handed, to check that what a trial sees
    does not depend on the number of workers.

    ``RAYBENCH_BATCH_TRACE=<dir>``: worker ``r`` appends one JSON line per iteration to
    ``<dir>/batches.rank<r>.jsonl``: ``{"iter": i, "rank": r, "samples": [...]}`` with ``i``
    the iteration number as in the metrics (1 = the first) and ``samples`` the dataset
    indices of its share of global batch ``i``, in the order its micro-batches are loaded.
    Concatenated in rank order, the shares are the global batch. Written when the sampler
    hands the share to the loader (which may read a few batches ahead of training); a
    resumed run appends again from its first iteration. Unset (the default): no trace object
    exists and nothing is done per batch.
    """

    def __init__(self, directory: str | os.PathLike[str], rank: int) -> None:
        self.rank = rank
        self.path = Path(directory) / f"batches.rank{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_env(cls, rank: int) -> BatchTrace | None:
        directory = os.environ.get(BATCH_TRACE_ENV)
        return cls(directory, rank) if directory else None

    def write(self, iteration: int, share: list[tuple[int, int]]) -> None:
        line = {"iter": iteration, "rank": self.rank, "samples": [index for _, index in share]}
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")


class StreamBatchSampler(Sampler[list[tuple[int, int]]]):
    """Micro-batches of one worker for iterations ``start .. total-1`` (``accum`` per iteration);
    ``trace``: record each iteration's share (see :class:`BatchTrace`)."""

    def __init__(
        self,
        stream: GlobalBatchStream,
        start: int,
        total: int,
        rank: int,
        world: int,
        accum: int,
        trace: BatchTrace | None = None,
    ) -> None:
        self.stream, self.start, self.total = stream, start, total
        self.rank, self.world, self.accum = rank, world, accum
        self.trace = trace

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start, self.total):
            share = self.stream.share(it, self.rank, self.world)
            micro = len(share) // self.accum
            if self.trace is not None:
                self.trace.write(it + 1, share)
            for m in range(self.accum):
                yield share[m * micro : (m + 1) * micro]

    def __len__(self) -> int:
        return max(0, self.total - self.start) * self.accum


def sample_seed(seed: int, position: int) -> int:
    """Seed of the augmentation of stream position ``position``."""
    return int(np.random.SeedSequence([seed, position]).generate_state(1, np.uint64)[0] >> 1)


class SeededItems(Dataset):
    """``dataset[index]`` then ``transforms`` with its generator seeded from the stream position.

    Indexed by ``(position, index)`` pairs from :class:`StreamBatchSampler`.
    """

    def __init__(
        self, dataset: Any, transforms: Transform | None, generator: torch.Generator, seed: int
    ) -> None:
        self.dataset, self.transforms, self.generator, self.seed = dataset, transforms, generator, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        position, index = key
        image, target = self.dataset[index]
        if self.transforms is not None:
            self.generator.manual_seed(sample_seed(self.seed, position))
            image, target = self.transforms(image, target)
        return image, target


class Shard(Dataset):
    """Items ``rank, rank + world, ...`` of ``dataset`` (evaluation: every image exactly once)."""

    def __init__(self, dataset: Any, rank: int, world: int, transforms: Transform | None = None) -> None:
        self.dataset, self.indices, self.transforms = (
            dataset,
            list(range(rank, len(dataset), world)),
            transforms,
        )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        image, target = self.dataset[self.indices[i]]
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


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


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Python and NumPy follow the worker's torch seed
    (which the loader's seeded generator sets), so no worker ever runs unseeded."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def ensure_dataset(spec: DatasetSpec) -> Path:
    """The dataset's root; written first from ``spec.synthetic`` when absent or stale
    (:func:`raybench.data.synth.ensure_synthetic`: atomic, safe when several trials race)."""
    if spec.synthetic is not None:
        from raybench.data.synth import ensure_synthetic

        ensure_synthetic(spec.root, spec.format, spec.synthetic)
    return Path(spec.root)
