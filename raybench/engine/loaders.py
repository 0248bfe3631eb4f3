"""The data a run reads: its datasets, and DataLoaders over one deterministic stream of
*global* batches, cut into worker shares.

Why: the global batch is part of the protocol, so what a trial sees must not depend on how
many workers run it. The stream is a concatenation of per-epoch permutations (epoch ``e``
is ``default_rng([seed, e]).permutation(N)``); global batch ``i`` is stream positions
``i*B .. i*B+B-1``. Worker ``r`` of ``W`` takes the contiguous share ``r*B/W ..`` of each
global batch and cuts it into ``accum`` micro-batches. Each sample's augmentation is drawn
from a generator seeded by ``(seed, stream position)``, so a sample is augmented the same
way whichever worker or loader process reads it, and the data position after ``i``
iterations is a pure function of ``i`` (resume needs nothing else). The datasets
themselves are :mod:`raybench.data`'s; the label-efficiency subset is
:mod:`raybench.engine.subsets`'.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from raybench.engine.accel import loader_options
from raybench.engine.checkpoint import derived_seed
from raybench.engine.distributed import World
from raybench.engine.subsets import fraction_subset
from raybench.study.spec import DatasetSpec, TrialSpec
from raybench.tasks import Task, Transform


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
    """The dataset's root; written first from ``spec.synthetic`` when absent or stale
    (:func:`raybench.data.synth.ensure_synthetic`: atomic, safe when several trials race)."""
    if spec.synthetic is not None:
        from raybench.data.synth import ensure_synthetic

        ensure_synthetic(spec.root, spec.format, spec.synthetic)
    return Path(spec.root)


def build_datasets(trial: TrialSpec) -> tuple[Any, Any]:
    """(train, val) datasets of the trial, untransformed (the task's transforms come later)."""
    from raybench.data import build_dataset

    root = ensure_dataset(trial.dataset)
    opts = dict(trial.dataset.options)
    fmt = trial.dataset.format
    return build_dataset(fmt, root, "train", **opts), build_dataset(fmt, root, "val", **opts)


def trial_datasets(trial: TrialSpec, given: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """(train, val) a run trains and evaluates on: ``given`` (``{"train": ..., "val": ...}``)
    or the trial's own, the training set cut to ``trial.train_fraction`` (the
    label-efficiency axis)."""
    train_set, val_set = (given["train"], given["val"]) if given is not None else build_datasets(trial)
    return fraction_subset(train_set, trial.train_fraction, trial.seed), val_set


class RunLoaders:
    """One run's DataLoaders. The training loader starting at any iteration is a pure function
    of that iteration (stream positions, per-sample seeds), so one rebuilt mid-run (with a
    smaller micro-batch by the OOM fallback, or on a resume) continues the same data."""

    def __init__(
        self,
        trial: TrialSpec,
        task: Task,
        stream: GlobalBatchStream,
        datasets: tuple[Any, Any],
        world: World,
        device: torch.device,
    ) -> None:
        self.trial, self.task, self.stream, self.world = trial, task, stream, world
        self.val_set = datasets[1]
        self.options = loader_options(trial.recipe.loader_workers, device)
        generator = torch.Generator()
        transforms = task.transforms("train", generator)
        self.train_items = SeededItems(datasets[0], transforms, generator, trial.seed)
        self.batches: Iterator[Any] = iter(())  # the training micro-batches, in order
        self.val_loader: DataLoader | None = None

    def restart(self, first: int, accum: int, micro: int) -> None:
        """Training from iteration ``first`` with ``accum`` micro-batches per iteration,
        evaluation ``micro`` images a batch."""
        train_loader = self.train(first, accum)
        self.val_loader = self.val(micro)
        self.batches = iter(train_loader)

    def stop(self) -> None:
        """Let the training loader go (its worker processes, its prefetched batches)."""
        self.batches = iter(())

    def train(self, first: int, accum: int) -> DataLoader:
        """The micro-batches (``accum`` per iteration) of iterations ``first`` .. the last."""
        rank, size = self.world.rank, self.world.size
        total = self.trial.recipe.schedule.iterations
        return DataLoader(
            self.train_items,
            batch_sampler=StreamBatchSampler(
                self.stream, first, total, rank, size, accum, trace=BatchTrace.from_env(rank)
            ),
            collate_fn=self.task.collate,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(derived_seed(self.trial.seed, rank, first)),
            **self.options,
        )

    def val(self, micro: int) -> DataLoader:
        """This worker's shard of the validation split, ``micro`` images a batch."""
        transforms = self.task.transforms("val", torch.Generator())
        return DataLoader(
            Shard(self.val_set, self.world.rank, self.world.size, transforms),
            batch_size=micro,
            shuffle=False,
            collate_fn=self.task.collate,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(self.trial.seed),
            **self.options,
        )
