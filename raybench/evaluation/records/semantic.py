"""Semantic-segmentation records: per image and class the intersection, union and
ground-truth pixel counts (:mod:`raybench.evaluation.records` says why, and how a resample
is given as weights)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from raybench.evaluation.records.weights import as_weights


@dataclass(frozen=True, eq=False)
class SemSegRecords:
    """Per-image, per-class pixel counts of a semantic-segmentation evaluation (see module doc).

    ``images``: ``[N]`` image keys (the index of the image in the validation split);
    ``inter`` / ``union`` / ``gt``: ``[N, C]`` int64 counts; ``class_names``: C names, as the
    evaluator's ``IoU-<name>`` keys; ``prefix``: the metric prefix (``val/``).
    """

    kind: ClassVar[str] = "semseg"
    images: np.ndarray
    inter: np.ndarray
    union: np.ndarray
    gt: np.ndarray
    class_names: tuple[str, ...]
    background_index: int | None = 0
    prefix: str = "val/"

    def __post_init__(self) -> None:
        n, c = len(self.images), len(self.class_names)
        for name in ("inter", "union", "gt"):
            shape = np.shape(getattr(self, name))
            if shape != (n, c):
                raise ValueError(f"SemSegRecords.{name} must be [{n}, {c}], got {shape}")

    @property
    def num_images(self) -> int:
        return len(self.images)

    def metrics(self) -> tuple[str, ...]:
        """Metric names :meth:`compute` knows (as the evaluator names them)."""
        names = ["mIoU", "mIoU_nobg", "mACC", "pACC", "fwIoU"]
        names += [f"IoU-{n}" for n in self.class_names] + [f"ACC-{n}" for n in self.class_names]
        return tuple(self.prefix + n for n in names)

    def compute(self, metric: str, weights: Any) -> np.ndarray:
        """``metric`` on every resample: weights ``[B, N]`` -> ``[B]`` percentages (NaN if undefined)."""
        if metric not in self.metrics():
            raise KeyError(f"semantic records cannot compute {metric!r}; known: {', '.join(self.metrics())}")
        name = metric[len(self.prefix) :]
        w = as_weights(weights, self.num_images).astype(np.float64)
        inter, union, gt = (w @ a.astype(np.float64) for a in (self.inter, self.union, self.gt))
        valid = gt > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(valid, inter / np.maximum(union, 1), np.nan)
            acc = np.where(valid, inter / np.maximum(gt, 1), np.nan)
            total = gt.sum(1)
            if name.startswith("IoU-") or name.startswith("ACC-"):
                k = self.class_names.index(name[4:])
                return (iou if name.startswith("IoU-") else acc)[:, k] * 100
            if name == "pACC":
                return np.where(total > 0, inter.sum(1) / np.maximum(total, 1), np.nan) * 100
            if name == "fwIoU":
                fw = np.where(valid, iou * gt, 0.0).sum(1)
                return np.where(total > 0, fw / np.maximum(total, 1), np.nan) * 100
            mask = valid.copy()
            values = acc if name == "mACC" else iou
            if name == "mIoU_nobg" and self.background_index is not None:
                mask[:, self.background_index] = False
            count = mask.sum(1)
            mean = np.where(mask, values, 0.0).sum(1) / np.maximum(count, 1)
            return np.where(count > 0, mean, np.nan) * 100


def semseg_records(
    stats: Sequence[Any],
    class_names: Sequence[str],
    background_index: int | None = 0,
    prefix: str = "val/",
) -> SemSegRecords:
    """Records from every worker's per-image statistics ``[n_r, 3, C]`` (intersection,
    ground-truth pixels, predicted pixels; see ``SemSegEvaluator(per_image=True)``), in rank
    order. The engine's validation shard of rank r holds split items ``r, r + world, ...``,
    so image j of rank r is split item ``r + j * world``."""
    world = len(stats)
    keys, rows = [], []
    for r, s in enumerate(stats):
        a = np.asarray(s.cpu() if hasattr(s, "cpu") else s, dtype=np.int64).reshape(-1, 3, len(class_names))
        keys.append(r + np.arange(len(a), dtype=np.int64) * world)
        rows.append(a)
    c = len(class_names)
    key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    arr = np.concatenate(rows) if rows else np.zeros((0, 3, c), np.int64)
    order = np.argsort(key, kind="stable")
    key, arr = key[order], arr[order]
    inter, gt, pred = arr[:, 0], arr[:, 1], arr[:, 2]
    return SemSegRecords(key, inter, gt + pred - inter, gt, tuple(class_names), background_index, prefix)


__all__ = ["SemSegRecords", "semseg_records"]
