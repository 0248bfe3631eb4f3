"""Bootstrap confidence intervals for Table 2 cells and paired deltas, from per-image records.

Why: the paper ran one seed and many of its Table 2 differences are one or two points; an
interval says whether such a difference is more than the luck of which validation images
were drawn (and, with several seeds, of which seed).

Method (docs/report.md explains it for readers):

* **Images.** A resample draws the dataset's N validation images with replacement
  (multinomial counts ``W[b, i]``); a trial's metric on it is recomputed from its per-image
  records (:mod:`raybench.evaluation.records`), exactly as its evaluator defines it. Every trial
  of a dataset is evaluated on the **same** resamples (they are drawn from the dataset id and
  the bootstrap seed only), which makes the intervals of deltas *paired*.
* **Seeds.** Seeds and images are crossed (every seed is evaluated on the same images), so a
  resample also draws the cell's S seeds with replacement and averages the drawn seeds' values
  on that one image resample (a two-level bootstrap: seeds, then images shared by the drawn
  seeds). A paired delta draws its common seeds with replacement and averages the per-seed
  differences. With one seed this is the plain image bootstrap.
* **Interval:** the 2.5 and 97.5 percentiles of the resampled values (percentile method,
  linear interpolation), B >= 1000 resamples, all random draws from ``numpy``'s PCG64 seeded
  with ``(seed, crc32(dataset))``: the same report twice gives the same intervals.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raybench.evaluation.records import Records, is_close

#: Default number of resamples and confidence level.
RESAMPLES = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A percentile interval: ``low``..``high`` at ``level``, from ``resamples`` resamples of
    ``images`` validation images (and ``seeds`` seeds)."""

    low: float
    high: float
    level: float
    resamples: int
    images: int
    seeds: int

    @property
    def method(self) -> str:
        return "seeds+images" if self.seeds > 1 else "images"

    def contains(self, value: float | None) -> bool | None:
        """Whether ``value`` lies in the closed interval (None for no value)."""
        if value is None or not math.isfinite(value):
            return None
        return self.low <= value <= self.high

    def excludes_zero(self) -> bool:
        return not (self.low <= 0.0 <= self.high)

    def text(self) -> str:
        return f"[{self.low:.2f}, {self.high:.2f}]"


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """(low, high) percentiles of the finite ``values`` (NaN, NaN if none is finite)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(v, [tail, 100 - tail])
    return float(low), float(high)


def dataset_rng(seed: int, dataset: str, *extra: int) -> np.random.Generator:
    """The generator of one dataset's draws: independent of which other datasets exist."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(dataset.encode()), *extra]))


def image_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``[resamples, n]`` multinomial counts: how often each image is drawn per resample."""
    if n < 1:
        raise ValueError("cannot resample an empty validation set")
    draws = rng.integers(0, n, (resamples, n)) + (np.arange(resamples) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n)


def seed_draws(n_seeds: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``[resamples, n_seeds]`` seed indices drawn with replacement (all zeros for one seed)."""
    if n_seeds <= 1:
        return np.zeros((resamples, max(n_seeds, 1)), np.int64)
    return rng.integers(0, n_seeds, (resamples, n_seeds))


def hierarchical(samples: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Per resample b, the mean over the drawn seeds of ``samples[seed, b]``.

    ``samples``: ``[S, B]`` metric (or delta) of each seed on image resample b; ``draws``:
    ``[B, S]`` from :func:`seed_draws`."""
    b = np.arange(samples.shape[1])[:, None]
    return samples[draws, b].mean(1)


def _aligned(records: Records, universe: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``weights`` (columns = ``universe`` images) re-ordered to the records' image order."""
    pos = np.searchsorted(universe, records.images)
    return weights[:, pos]


@dataclass
class Bootstrap:
    """Intervals of one report: ``cells[(row, dataset)]`` and ``pairs[(arch, regime, dataset,
    other, reference)]``; ``notes`` say why an interval is absent where records exist."""

    resamples: int
    level: float
    seed: int
    cells: dict[tuple[Any, str], Interval] = field(default_factory=dict)
    pairs: dict[tuple[str, str, str, str, str], Interval] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def bootstrap_report(
    cells: Sequence[Any],
    stored: Mapping[str, Mapping[int, Any]],
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
    reference: str = "supervised",
) -> Bootstrap:
    """Intervals for every Table 2 cell whose finished seeds all have records of their final
    evaluation, and for every paired delta (as :func:`raybench.results.report.paired_deltas`
    forms them) between two such cells.

    ``cells``: the report's cells (``row``, ``dataset``, ``metric``, ``trials``); ``stored``:
    :func:`raybench.results.store.read_eval_records`."""
    out = Bootstrap(resamples=resamples, level=level, seed=seed)
    if resamples < 1:
        return out
    by_dataset: dict[str, list[Any]] = {}
    for c in cells:
        by_dataset.setdefault(c.dataset, []).append(c)
    for dataset, group in by_dataset.items():
        samples: dict[tuple[Any, int], np.ndarray] = {}  # (row, seed) -> [B]
        universes: dict[Any, tuple[np.ndarray, np.ndarray]] = {}  # row -> (images, W)
        weights: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        for c in group:
            fin = [t for t in c.trials if t.state == "finished" and t.final is not None]
            if not fin or not c.metric:
                continue
            parts = [_records_of(t, c.metric, stored, out.notes) for t in fin]
            if any(p is None for p in parts):
                continue
            images = parts[0].images
            if any(not np.array_equal(p.images, images) for p in parts):
                out.notes.append(
                    f"{dataset} {c.row}: seeds evaluated different validation images; no interval"
                )
                continue
            key = images.tobytes()
            if key not in weights:  # one draw per validation set: every trial on the same resamples
                weights[key] = (images, image_weights(len(images), resamples, dataset_rng(seed, dataset)))
            universe, w = weights[key]
            universes[c.row] = (universe, w)
            per_seed = []
            for t, part in zip(fin, parts):
                values = part.compute(c.metric, _aligned(part, universe, w))
                point = float(part.compute(c.metric, np.ones((1, len(part.images)), np.int64))[0])
                if not is_close(point, t.final):  # the store's float64 vs records' ~1e-12
                    got = f"records give {c.metric} = {point:.4f}, the store {t.final:.4f}"
                    out.notes.append(f"{t.trial}: {got}; no interval")
                    per_seed = []
                    break
                seed_key = t.seed if t.seed is not None else len(per_seed)
                samples[(c.row, seed_key)] = values
                per_seed.append(values)
            if not per_seed:
                continue
            draws = seed_draws(len(per_seed), resamples, dataset_rng(seed, dataset, 1, _row_hash(c.row)))
            values = hierarchical(np.stack(per_seed), draws)
            low, high = percentile_interval(values, level)
            out.cells[(c.row, dataset)] = Interval(low, high, level, resamples, len(universe), len(per_seed))
        # Paired deltas: same backbone, regime, dataset; other pretraining - reference.
        by_key: dict[tuple[str, str], dict[str, Any]] = {}
        for c in group:
            by_key.setdefault((c.row[0], c.row[2]), {})[c.row[1]] = c
        for (arch, regime), by_pre in by_key.items():
            if len(by_pre) < 2:
                continue
            ref = reference if reference in by_pre else sorted(by_pre)[0]
            a = by_pre[ref]
            for pre, b in sorted(by_pre.items()):
                if pre == ref or a.row not in universes or b.row not in universes:
                    continue
                if not np.array_equal(universes[a.row][0], universes[b.row][0]):
                    out.notes.append(
                        f"{dataset} {arch} {regime}: {pre} and {ref} saw different images; no interval"
                    )
                    continue
                common = sorted(set(a.seeds) & set(b.seeds))
                diffs = [
                    samples[(b.row, s)] - samples[(a.row, s)]
                    for s in common
                    if (b.row, s) in samples and (a.row, s) in samples
                ]
                if not diffs or len(diffs) != len(common):
                    continue
                rng = dataset_rng(seed, dataset, 2, _row_hash(b.row), _row_hash(a.row))
                values = hierarchical(np.stack(diffs), seed_draws(len(diffs), resamples, rng))
                low, high = percentile_interval(values, level)
                n = len(universes[a.row][0])
                out.pairs[(arch, regime, dataset, pre, ref)] = Interval(
                    low, high, level, resamples, n, len(diffs)
                )
    return out


def _row_hash(row: Any) -> int:
    return zlib.crc32("|".join(map(str, row)).encode())


def _records_of(
    t: Any, metric: str, stored: Mapping[str, Mapping[int, Any]], notes: list[str]
) -> Records | None:
    """The records part of trial ``t`` that computes ``metric`` at its final evaluation."""
    by_iter = stored.get(t.trial)
    if not by_iter:
        return None  # no records at all (e.g. written before records existed): no interval, no note
    rec = by_iter.get(t.final_iter) if t.final_iter is not None else None
    if rec is None:
        notes.append(
            f"{t.trial}: records at iteration(s) {sorted(by_iter)}, final evaluation at {t.final_iter}"
        )
        return None
    part = rec.records.by_metric(metric)
    if part is None:
        notes.append(f"{t.trial}: its records cannot compute {metric}")
    return part


def warn_notes(boot: Bootstrap) -> None:
    """One warning per note (records that exist but could not be used)."""
    for note in boot.notes:
        warnings.warn(f"raybench report: bootstrap: {note}", stacklevel=2)


__all__ = [
    "LEVEL",
    "RESAMPLES",
    "Bootstrap",
    "Interval",
    "bootstrap_report",
    "dataset_rng",
    "hierarchical",
    "image_weights",
    "percentile_interval",
    "seed_draws",
    "warn_notes",
]
