"""Per-image evaluation records: enough of a final evaluation to recompute its metrics on any
multiset of validation images, without the model or the images.

Why: a bootstrap confidence interval recomputes a metric on >= 1000 resamples of the
validation set. Re-running SemSegEvaluator or COCOeval per resample would take minutes per
cell; these records make a resample a weighted sum (semantic) or a weighted cumulative sum
(detection), vectorised over all resamples at once.

A resample is given as integer **weights** ``W[b, i]`` = how many times image ``i`` was drawn
in resample ``b`` (``W = 1`` everywhere is the evaluation itself). Every ``compute`` returns one
value per resample, in percent, defined exactly as the evaluator that wrote the records:

* :class:`SemSegRecords` (``kind = "semseg"``): per image and class the intersection
  (true-positive pixels), the union (ground truth + prediction - intersection) and the
  ground-truth pixel count, all without ignored pixels. IoU of class c on a resample =
  ``sum_i W_i inter_ic / sum_i W_i union_ic``; the mean runs over the classes with ground truth
  *in the resample* (as :class:`~raybench.evaluation.semseg.SemSegEvaluator` leaves out classes
  without ground truth), ``mIoU_nobg`` without the background class.
* :class:`DetectionRecords` (``kind = "bbox"`` / ``"segm"``): COCOeval's per-image matching at
  area range ``all`` and maxDets 100 (``evalImgs``): for each image and category the number of
  non-ignored ground truths, and for each kept detection its score and, per IoU threshold,
  whether it is a true positive (matched, not ignored) or a false positive (unmatched, not
  ignored). AP is COCOeval.accumulate's: detections of a category sorted by score (stable,
  images in id order), cumulative TP / FP, precision made monotone, read at 101 recall points,
  averaged over IoU thresholds and over the categories with ground truth in the resample.
  Duplicated images (weights > 1) give exactly COCOeval's value on a ground truth in which the
  copies are separate images (tested against pycocotools), ties between *different*
  detections with identical scores aside.

Where each piece lives: :mod:`.semantic` (:class:`SemSegRecords`, :func:`semseg_records`),
:mod:`.detection` (:class:`DetectionRecords`, :func:`coco_records`), :mod:`.weights`; this
module holds what both share (the schema version, :class:`EvalRecords`) and re-exports the rest.
The Parquet form of records is the results store's (``raybench.results.store.eval_records``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from raybench.evaluation.records.detection import (
    IOU_THRESHOLDS,
    RECALL_THRESHOLDS,
    DetectionRecords,
    coco_records,
)
from raybench.evaluation.records.semantic import SemSegRecords, semseg_records
from raybench.evaluation.records.weights import full_weights

#: Version of the records' layout (bump when a field changes meaning; readers check it).
SCHEMA_VERSION = 1

Records = SemSegRecords | DetectionRecords


@dataclass
class EvalRecords:
    """The records of one evaluation: one entry per kind (``semseg``; ``bbox`` and ``segm``)."""

    parts: list[Records]

    def by_metric(self, metric: str) -> Records | None:
        """The part that can compute ``metric`` (None if none can)."""
        return next((p for p in self.parts if metric in p.metrics()), None)

    def metrics(self) -> tuple[str, ...]:
        return tuple(m for p in self.parts for m in p.metrics())


def is_close(a: float, b: float, tol: float = 1e-6) -> bool:
    """Both NaN, or equal within ``tol`` (percent points)."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


__all__ = [
    "IOU_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "SCHEMA_VERSION",
    "DetectionRecords",
    "EvalRecords",
    "Records",
    "SemSegRecords",
    "coco_records",
    "full_weights",
    "is_close",
    "semseg_records",
]
