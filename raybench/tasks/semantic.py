"""Semantic segmentation (Mask2Former, UPerNet, FPN) on the engine's task interface.

Classes: the datasets give ``sem_seg`` with 0 = background, 1..K = defect classes, 255 = ignore;
the model predicts K + 1 classes, background included (``class_names`` =
``("background", *dataset classes)``), so ``val/mIoU`` counts the background as Detectron2's
does (Severstal's headline) and ``val/mIoU_nobg`` leaves it out (Rubber Rings' headline).

Data: ``build_transforms("semantic", ...)`` from the recipe's input options — training:
multi-scale short-edge resize, defect-aware crop, SSD colour distortion (``color_aug_ssd``),
flip, pad to the crop size (image 128, ``sem_seg`` 255: Mask2Former's semantic mapper);
validation: resize to the test short edge — without its divisibility step:
:meth:`SemanticTask.collate` pads each batch to its largest image (multiple of the recipe's
``size_divisibility`` and of 32; ``sem_seg`` with 255) and keeps every image's valid size, which
the model uses to set the padding to 0.0 after normalisation (Mask2Former's ``ImageList``
padding). Validation items also carry their original, unresized ``sem_seg``.

Evaluation: scores at the padded input size -> crop to the image's valid size -> bilinear
resize to the original image size -> argmax, compared with the *original* ground truth, as
Detectron2's ``sem_seg_postprocess`` + ``SemSegEvaluator`` do. The confusion matrices of all
workers are summed (``gather``) before the metrics.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from raybench.backbones import build_backbone
from raybench.evaluation.records import EvalRecords, semseg_records
from raybench.evaluation.semseg import SemSegEvaluator
from raybench.models.semantic import IGNORE_INDEX, build_segmenter
from raybench.tasks import DatasetMeta, Gather, Task, Transform, register_task

#: Every decoder needs sizes divisible by the backbone's largest stride (FPN upsamples by exactly 2).
MIN_DIVISIBILITY = 32
#: Key of the unresized ground truth that validation items carry to the evaluator.
ORIGINAL_KEY = "original_sem_seg"


class SemanticBatch(NamedTuple):
    """A collated batch. ``images`` uint8 ``[B, 3, H, W]`` and ``sem_seg`` int64 ``[B, H, W]``
    (padding: 0 / 255; the model replaces the image padding with 0.0 after normalising);
    ``sizes`` each image's (h, w) before padding; ``originals`` the unresized ground truths
    (validation only, kept on the CPU), else None."""

    images: torch.Tensor
    sem_seg: torch.Tensor
    sizes: tuple[tuple[int, int], ...]
    originals: tuple[torch.Tensor, ...] | None = None


class KeepOriginal:
    """Run ``pipeline`` and keep the item's unresized ``sem_seg`` under :data:`ORIGINAL_KEY`."""

    def __init__(self, pipeline: Transform) -> None:
        self.pipeline = pipeline

    def __call__(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        out_image, out_target = self.pipeline(image, target)
        return out_image, {**out_target, ORIGINAL_KEY: target["sem_seg"]}

    def __repr__(self) -> str:
        return f"KeepOriginal({self.pipeline!r})"


def collate_semantic(
    items: Sequence[tuple[torch.Tensor, dict[str, Any]]], divisibility: int = MIN_DIVISIBILITY
) -> SemanticBatch:
    """Pad to the batch's largest image, rounded up to ``divisibility``; see :class:`SemanticBatch`."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    sizes = tuple((int(im.shape[-2]), int(im.shape[-1])) for im, _ in items)
    h = math.ceil(max(s[0] for s in sizes) / divisibility) * divisibility
    w = math.ceil(max(s[1] for s in sizes) / divisibility) * divisibility
    images = torch.zeros(len(items), 3, h, w, dtype=torch.uint8)
    sem_seg = torch.full((len(items), h, w), IGNORE_INDEX, dtype=torch.int64)
    for i, (image, target) in enumerate(items):
        ih, iw = sizes[i]
        images[i, :, :ih, :iw] = image
        sem_seg[i, :ih, :iw] = target["sem_seg"]
    have = [ORIGINAL_KEY in t for _, t in items]
    originals = tuple(t[ORIGINAL_KEY] for _, t in items) if all(have) else None
    return SemanticBatch(images, sem_seg, sizes, originals)


class GatheredSemSegEvaluator:
    """:class:`~raybench.evaluation.semseg.SemSegEvaluator` over a task's batches and all workers.

    What it adds to ``SemSegEvaluator`` (one process, one prediction/ground-truth pair at a
    time): it reads :class:`SemanticBatch` es (the original ground truth when the batch has it,
    else the valid crop), counts on the predictions' device, sums every worker's confusion
    matrix (``gather``) and keeps every worker's per-image records (bootstrap intervals).
    Per-image predictions -> one confusion matrix per worker -> summed -> ``val/*`` metrics.

    ``class_names`` include the background (index 0). ``gather(obj)`` returns every worker's
    ``obj`` (the engine's ``all_gather_object``; ``lambda x: [x]`` for one process).
    """

    def __init__(
        self,
        class_names: Sequence[str],
        gather: Gather,
        ignore_index: int = IGNORE_INDEX,
        prefix: str = "val/",
    ) -> None:
        self.class_names = tuple(class_names)
        self.ignore_index = ignore_index
        self.gather = gather
        self.prefix = prefix
        self.semseg = self._new()
        #: per-image records of the last :meth:`evaluate` (all workers); None before it
        self.last_records: Any = None

    def _new(self) -> SemSegEvaluator:
        return SemSegEvaluator(
            len(self.class_names), self.ignore_index, self.class_names, background_index=0, per_image=True
        )

    def reset(self) -> None:
        self.semseg.reset()

    def process(self, batch: SemanticBatch, predictions: Sequence[dict[str, torch.Tensor]]) -> None:
        """``predictions[i]["sem_seg"]``: class ids at the original size (or the valid size
        when the batch has no originals)."""
        for i, pred in enumerate(predictions):
            if batch.originals is not None:
                gt = batch.originals[i]
            else:
                h, w = batch.sizes[i]
                gt = batch.sem_seg[i, :h, :w]
            sem = pred["sem_seg"]
            if self.semseg.confusion.device != sem.device:
                # Count on the predictions' device: no per-image copy to the host, one at the end.
                self.semseg.confusion = self.semseg.confusion.to(sem.device)
            self.semseg.process(sem, gt)

    def evaluate(self) -> dict[str, float]:
        merged = self._new()
        for confusion in self.gather(self.semseg.confusion.cpu()):
            merged.confusion += confusion.to(merged.confusion.device)
        # Per-image counts of every worker (the bootstrap's records), gathered like the matrix.
        self.last_records = semseg_records(
            self.gather(self.semseg.image_stats()), self.class_names, 0, self.prefix
        )
        return {f"{self.prefix}{k}": v for k, v in merged.evaluate().items()}

    def records(self) -> EvalRecords | None:
        """Per-image records of the last :meth:`evaluate` (all workers), for bootstrap intervals."""
        return EvalRecords([self.last_records]) if self.last_records is not None else None


@register_task(kinds=("semantic",))
class SemanticTask(Task):
    """Semantic segmentation with any decoder registered for the ``semantic`` task
    (``raybench.models.semantic``: Mask2Former, UPerNet, FPN)."""

    @property
    def divisibility(self) -> int:
        d = int(self.trial.recipe.input.size_divisibility)
        return d * MIN_DIVISIBILITY // math.gcd(d, MIN_DIVISIBILITY)

    def build_model(self, meta: DatasetMeta) -> nn.Module:
        t = self.trial
        if meta.ignore_index != IGNORE_INDEX:
            raise ValueError(
                f"{t.name}: semantic datasets must use ignore index {IGNORE_INDEX}, got {meta.ignore_index}"
            )
        backbone = build_backbone(t.backbone, drop_path_rate=t.recipe.drop_path, frozen=t.regime == "frozen")
        return build_segmenter(t.decoder, backbone, meta.num_classes + 1, t.recipe.model_options(t.decoder))

    def transforms(self, split: str, generator: torch.Generator) -> Transform | None:
        from raybench.data.transforms import build_transforms

        options = dataclasses.asdict(self.trial.recipe.input)
        options["size_divisibility"] = 1  # collate pads (and remembers the valid sizes)
        pipeline = build_transforms(
            "semantic", split, **options, ignore_index=IGNORE_INDEX, generator=generator
        )
        return pipeline if split == "train" else KeepOriginal(pipeline)

    def collate(self, items: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> SemanticBatch:
        return collate_semantic(items, self.divisibility)

    def batch_size(self, batch: SemanticBatch) -> int:
        return int(batch.images.shape[0])

    def to_device(self, batch: SemanticBatch, device: torch.device) -> SemanticBatch:
        return batch._replace(
            images=batch.images.to(device, non_blocking=True),
            sem_seg=batch.sem_seg.to(device, non_blocking=True),
        )

    def train_step(self, model: nn.Module, batch: SemanticBatch) -> dict[str, torch.Tensor]:
        return model(batch.images, batch.sem_seg, batch.sizes)

    def predict(self, model: nn.Module, batch: SemanticBatch) -> list[dict[str, torch.Tensor]]:
        """``sem_seg`` int64 per image, at the original size when the batch carries originals."""
        scores = model(batch.images, sizes=batch.sizes)
        out = []
        for i, (h, w) in enumerate(batch.sizes):
            s = scores[i : i + 1, :, :h, :w].float()
            if batch.originals is not None:
                size = tuple(int(v) for v in batch.originals[i].shape[-2:])
                if size != (h, w):
                    s = F.interpolate(s, size=size, mode="bilinear", align_corners=False)
            out.append({"sem_seg": s[0].argmax(0)})
        return out

    def build_evaluator(self, meta: DatasetMeta, gather: Gather) -> GatheredSemSegEvaluator:
        names = tuple(meta.class_names)
        if len(names) != meta.num_classes:
            names = tuple(str(c) for c in range(1, meta.num_classes + 1))
        return GatheredSemSegEvaluator(("background", *names), gather, meta.ignore_index)
