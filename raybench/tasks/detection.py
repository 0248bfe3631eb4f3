"""Detection (Faster R-CNN) and instance segmentation (Mask R-CNN) with torchvision.

Data: the pipeline only flips (torchvision's transform resizes inside the model, see
:mod:`raybench.models.detection`); batches are lists, images stay ``uint8`` until they
reach the device. The model normalises, resizes and pads the batch with 0.0 after
normalisation (= the mean colour), as Detectron2's ``GeneralizedRCNN.preprocess_image``.
Losses are torchvision's (each already a mean over sampled anchors / proposals of the
batch). Metrics: COCO box AP (and mask AP for Mask R-CNN).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from raybench.backbones import build_backbone
from raybench.evaluation.coco import CocoEvaluator
from raybench.models.detection import build_detector, detector_backbone
from raybench.study.spec import TrialSpec
from raybench.tasks import DatasetMeta, Gather, Task, Transform, register_task

#: Target entries torchvision's detectors read during training.
MODEL_TARGET_KEYS: tuple[str, ...] = ("boxes", "labels", "masks")


def _images(batch: Any) -> list[torch.Tensor]:
    return [im.float() / 255.0 for im in batch[0]]


@register_task(kinds=("detection", "instance"))
class DetectionTask(Task):
    """torchvision R-CNN detectors over a raybench backbone + FPN: box detection (Faster
    R-CNN) and instance segmentation (Mask R-CNN, masks too)."""

    def __init__(self, trial: TrialSpec) -> None:
        super().__init__(trial)
        if trial.recipe.input.color_aug_ssd:
            raise ValueError(
                f"{trial.name}: recipe input.color_aug_ssd is Mask2Former's semantic augmentation; "
                f"the {trial.decoder} pipeline (Detectron2's: resize + flip) has none, set it to false"
            )

    @property
    def masks(self) -> bool:
        """Instance segmentation: the model predicts (and trains on) masks too."""
        return self.trial.task == "instance"

    @property
    def iou_types(self) -> tuple[str, ...]:
        return ("bbox", "segm") if self.masks else ("bbox",)

    def build_model(self, meta: DatasetMeta) -> nn.Module:
        t = self.trial
        backbone = build_backbone(t.backbone, drop_path_rate=t.recipe.drop_path, frozen=t.regime == "frozen")
        return build_detector(
            t.decoder, backbone, meta.num_classes, t.recipe.model_options(t.decoder), t.recipe.input
        )

    def backbone(self, model: nn.Module) -> nn.Module:
        return detector_backbone(model)

    def cudnn_autotune(self) -> bool:
        """Not for Mask R-CNN: its mask head convolves however many positive proposals an
        iteration has (a new batch size nearly every step), and a cuDNN search per new
        shape costs more than it saves (Detectron2 leaves ``CUDNN_BENCHMARK`` off too)."""
        return not self.masks

    def transforms(self, split: str, generator: torch.Generator) -> Transform | None:
        if split == "train" and self.trial.recipe.input.flip:
            from raybench.data.transforms import RandomHorizontalFlip

            return RandomHorizontalFlip(0.5, generator=generator)
        return None

    def train_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        wanted = MODEL_TARGET_KEYS if self.masks else MODEL_TARGET_KEYS[:2]
        targets = [{k: t[k] for k in wanted} for t in batch[1]]
        return model(_images(batch), targets)

    def predict(self, model: nn.Module, batch: Any) -> list[dict[str, Any]]:
        return model(_images(batch))

    def build_evaluator(self, meta: DatasetMeta, gather: Gather) -> CocoEvaluator:
        return CocoEvaluator(self.iou_types, meta.class_names, gather=gather)

    def evaluate_step(self, model: nn.Module, batch: Any, evaluator: Any) -> None:
        outputs = self.predict(model, batch)
        for o in outputs:
            if "masks" in o:  # threshold on the device: 1 byte per pixel to move, not 4
                o["masks"] = o["masks"] > evaluator.mask_threshold
        outputs = [{k: v.to("cpu") for k, v in o.items()} for o in outputs]
        targets = [
            {k: (v.to("cpu") if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in batch[1]
        ]
        evaluator.process(targets, outputs)
