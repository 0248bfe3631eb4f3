"""Semantic-segmentation metrics from a dataset-level confusion matrix (Detectron2's SemSegEvaluator).

:class:`SemSegEvaluator` is the pure metric: it counts pixels into one confusion matrix and
computes the metrics from it; it gathers nothing across workers. The semantic task's evaluator
(:mod:`raybench.tasks.semantic`) gathers every worker's matrix and hands the sum to it.

The confusion matrix is accumulated over the whole split, not averaged per image: IoU of class c is
``TP / (TP + FP + FN)`` summed over all pixels of all images, as Detectron2 (and the paper's Mask2Former
runs) report it. Ground-truth pixels equal to ``ignore_index`` are not counted anywhere.

Conventions (as Detectron2): ``confusion[pred, gt]`` (rows = prediction, columns = ground truth), shape
``[K + 1, K + 1]``; the last row/column collects ignored ground truth and is dropped by
:meth:`SemSegEvaluator.evaluate`. A class without ground-truth pixels in the split has IoU / accuracy
NaN and is left out of every mean (even if it was predicted: those false positives still cost the
classes whose pixels they took). All values are percentages (0-100).

Metrics of :meth:`SemSegEvaluator.evaluate`:

* ``IoU-<name>`` and ``ACC-<name>`` (recall) per class;
* ``mIoU`` mean IoU over all classes with ground truth, background included (Detectron2's mIoU);
* ``mIoU_nobg`` the same without the background class (e.g. Rubber Rings' published mIoU);
* ``fwIoU`` IoU weighted by each class's ground-truth pixel share; ``pACC`` pixel accuracy; ``mACC``;
* ``FB_IoU`` foreground/background IoU: collapse every non-background class into one "foreground"
  class (a foreground pixel predicted as another foreground class counts as correct), compute the IoU
  of foreground and of background, and average the two (the FB-IoU of the few-shot segmentation
  literature). The two parts are reported as ``FB_IoU-fg`` and ``FB_IoU-bg`` (the latter equals the
  background's own IoU); a part with no pixels in ground truth or prediction is left out of the mean.
  Needs a background class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def _as_long_tensor(x: Any, device: torch.device) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(x)
    return t.to(device=device, dtype=torch.int64)


class SemSegEvaluator:
    """The confusion-matrix metric: accumulate ``process(pred, gt)`` over a split (``merge`` adds
    another shard's counts), then ``evaluate()``; see the module docstring. No gathering across
    workers happens here: the caller sums the matrices.

    Args:
        num_classes: K, class ids 0..K-1.
        ignore_index: ground-truth value that is not evaluated.
        class_names: K names for the per-class keys (default ``"0".."K-1"``).
        background_index: the background class (excluded by ``mIoU_nobg``, used by ``FB_IoU``);
            None if the label set has no background (then ``mIoU_nobg`` equals ``mIoU``, no ``FB_IoU``).
        device: where the confusion matrix lives (put it on the GPU when predictions are there).
        per_image: also keep every image's intersection, ground-truth and predicted pixel
            counts per class (:meth:`image_stats`), from which the metrics can be recomputed
            on any resample of the images (bootstrap intervals, :mod:`raybench.evaluation.records`).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        background_index: int | None = 0,
        device: torch.device | str = "cpu",
        per_image: bool = False,
    ):
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        if background_index is not None and not 0 <= background_index < num_classes:
            raise ValueError(f"background_index {background_index} outside 0..{num_classes - 1}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = (
            list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        )
        self.background_index = background_index
        self.confusion = torch.zeros(num_classes + 1, num_classes + 1, dtype=torch.int64, device=device)
        self.per_image = per_image
        self._image_stats: list[Tensor] = []

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.confusion.zero_()
        self._image_stats = []

    def image_stats(self) -> Tensor:
        """``[images, 3, K]`` int64 on the CPU, in processing order: per image and class the
        intersection (true-positive pixels), ground-truth pixels and predicted pixels, ignored
        ground truth left out (needs ``per_image=True``)."""
        if not self.per_image:
            raise RuntimeError("per-image statistics need SemSegEvaluator(per_image=True)")
        k = self.num_classes
        if not self._image_stats:
            return torch.zeros(0, 3, k, dtype=torch.int64)
        return torch.stack(self._image_stats).cpu()

    def process(self, pred: Tensor, gt: Tensor) -> None:
        """Add one image: ``pred`` and ``gt`` integer maps of the same shape (tensors or arrays).

        ``pred`` must hold class ids 0..K-1; ``gt`` class ids or ``ignore_index``.
        """
        device = self.confusion.device
        pred = _as_long_tensor(pred, device).reshape(-1)
        gt = _as_long_tensor(gt, device).reshape(-1)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction has {pred.numel()} pixels, ground truth {gt.numel()}")
        k = self.num_classes
        gt = torch.where(gt == self.ignore_index, torch.full_like(gt, k), gt)
        if pred.numel() and (pred.min() < 0 or pred.max() >= k):
            raise ValueError(f"predicted class ids must lie in 0..{k - 1}")
        if gt.numel() and (gt.min() < 0 or gt.max() > k):
            raise ValueError(f"ground-truth ids must lie in 0..{k - 1} or be {self.ignore_index}")
        counts = torch.bincount((k + 1) * pred + gt, minlength=(k + 1) ** 2)
        self.confusion += counts.view(k + 1, k + 1)
        if self.per_image:  # kept on the device: one copy to the host at the end, not per image
            conf = counts.view(k + 1, k + 1)[:k, :k]
            self._image_stats.append(torch.stack([conf.diagonal(), conf.sum(0), conf.sum(1)]))

    def merge(self, other: SemSegEvaluator) -> None:
        """Add another evaluator's counts (e.g. a shard evaluated by another worker)."""
        if other.confusion.shape != self.confusion.shape:
            raise ValueError("cannot merge evaluators with different numbers of classes")
        self.confusion += other.confusion.to(self.confusion.device)
        if self.per_image and other.per_image:
            self._image_stats += [s.to(self.confusion.device) for s in other._image_stats]

    def evaluate(self) -> dict[str, float]:
        """Metrics in percent (see the module docstring); NaN for classes without ground truth."""
        k = self.num_classes
        conf = self.confusion[:k, :k].to(torch.float64).cpu()
        tp = conf.diagonal()
        pos_gt = conf.sum(0)
        pos_pred = conf.sum(1)
        union = pos_gt + pos_pred - tp
        valid = pos_gt > 0
        nan = torch.full((k,), math.nan, dtype=torch.float64)
        iou = torch.where(valid, tp / union.clamp(min=1), nan)
        acc = torch.where(valid, tp / pos_gt.clamp(min=1), nan)
        total = pos_gt.sum()

        def mean(values: Tensor, mask: Tensor) -> float:
            return float(values[mask].mean()) * 100 if bool(mask.any()) else math.nan

        res: dict[str, float] = {
            "mIoU": mean(iou, valid),
            "fwIoU": float((iou[valid] * pos_gt[valid]).sum() / total) * 100 if total > 0 else math.nan,
            "mACC": mean(acc, valid),
            "pACC": float(tp.sum() / total) * 100 if total > 0 else math.nan,
        }
        foreground = torch.ones(k, dtype=torch.bool)
        if self.background_index is not None:
            foreground[self.background_index] = False
        res["mIoU_nobg"] = mean(iou, valid & foreground)
        if self.background_index is not None:
            bg = self.background_index
            tp_bg = conf[bg, bg]
            tp_fg = conf[foreground][:, foreground].sum()
            fg_as_bg = conf[bg, foreground].sum()  # foreground pixels predicted as background
            bg_as_fg = conf[foreground, bg].sum()  # background pixels predicted as foreground
            iou_bg = tp_bg / (tp_bg + fg_as_bg + bg_as_fg) if tp_bg + fg_as_bg + bg_as_fg > 0 else math.nan
            iou_fg = tp_fg / (tp_fg + fg_as_bg + bg_as_fg) if tp_fg + fg_as_bg + bg_as_fg > 0 else math.nan
            iou_bg, iou_fg = float(iou_bg) * 100, float(iou_fg) * 100
            res["FB_IoU-bg"] = iou_bg
            res["FB_IoU-fg"] = iou_fg
            both = [v for v in (iou_bg, iou_fg) if not math.isnan(v)]
            res["FB_IoU"] = sum(both) / len(both) if both else math.nan
        for i, name in enumerate(self.class_names):
            res[f"IoU-{name}"] = float(iou[i]) * 100
            res[f"ACC-{name}"] = float(acc[i]) * 100
        return res
