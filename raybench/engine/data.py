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
import os
import random
import shutil
import uuid
from collections.abc import Iterator
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


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Python and NumPy follow the worker's torch seed
    (which the loader's seeded generator sets), so no worker ever runs unseeded."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def ensure_dataset(spec: DatasetSpec) -> Path:
    """The dataset's root; written first from ``spec.synthetic`` when absent.

    Several trials may race for the same root: each writes a private temporary folder and
    renames it into place; the losers delete theirs. A reader never sees a partial root.
    """
    root = Path(spec.root)
    if root.exists() or spec.synthetic is None:
        return root
    from raybench.data.synth import synthesize

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        synth = spec.synthetic
        synthesize(
            spec.format,
            tmp,
            images=synth.images,
            size=synth.size,
            seed=synth.seed,
            object_scale=synth.object_scale,
        )
        os.rename(tmp, root)
    except OSError:
        if not root.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
