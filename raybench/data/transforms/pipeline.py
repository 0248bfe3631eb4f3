"""The train / val pipelines of a task, built from the recipe's input options.

Every transform maps ``(image uint8 [3,H,W], target) -> (image, target)``; there is no
normalisation here (models normalise, see :mod:`raybench.models.semantic`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from raybench.data.transforms.color import ColorAugSSD
from raybench.data.transforms.common import Target
from raybench.data.transforms.geometric import (
    DefectAwareCrop,
    RandomHorizontalFlip,
    ResizeShortEdge,
    resize_then_crop,
)
from raybench.data.transforms.pad import M2F_IMAGE_PAD, PadToDivisible, PadToSize


class Compose:
    """Apply transforms in order (a resize directly followed by a crop runs fused)."""

    def __init__(
        self, transforms: Sequence[Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]]
    ) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        ts, i = self.transforms, 0
        while i < len(ts):
            t = ts[i]
            if isinstance(t, ResizeShortEdge) and i + 1 < len(ts) and isinstance(ts[i + 1], DefectAwareCrop):
                image, target = resize_then_crop(t, ts[i + 1], image, target)
                i += 2
                continue
            image, target = t(image, target)
            i += 1
        return image, target

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"


def default_train_short_edges(task: str, test_short_edge: int) -> tuple[int, ...]:
    """Mask2Former: 0.5x..2.0x the test size (step 0.1); Detectron2: 640..800 scaled."""
    if task == "semantic":
        return tuple(int(test_short_edge * k / 10) for k in range(5, 21))
    return tuple(round(test_short_edge * s / 800) for s in (640, 672, 704, 736, 768, 800))


def build_transforms(
    task: str,
    split: str,
    *,
    train_short_edge: Sequence[int] | int | None = None,
    train_max_size: int | None = None,
    test_short_edge: int = 800,
    test_max_size: int | None = None,
    crop_size: int | Sequence[int] | None = None,
    crop_defect_p: float = 0.7,
    flip: bool = True,
    color_aug_ssd: bool = False,
    size_divisibility: int = 32,
    ignore_index: int = 255,
    generator: torch.Generator | None = None,
) -> Compose:
    """The train or val pipeline of a task from the recipe's input options.

    Option names match the study's ``InputSpec``. Defaults: semantic = Mask2Former
    (multi-scale 0.5-2.0x, crop test x test, no max size so Severstal's 6.25:1 aspect
    survives); detection/instance = Detectron2 (640-800 scaled, max 1333 scaled, no crop).
    Training order = Mask2Former's semantic mapper: resize, crop, SSD colour distortion
    (``color_aug_ssd``), flip, then (semantic) pad to the crop size with 128 / ignore, as
    its mapper pads to ``INPUT.SIZE_DIVISIBILITY`` (= the crop size in its ADE20K recipe).
    """
    if task not in ("semantic", "detection", "instance"):
        raise ValueError(f"unknown task {task!r}; expected semantic, detection or instance")
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}; expected train or val")
    dense = task == "semantic"
    default_max = None if dense else round(1333 * test_short_edge / 800)
    if split == "val":
        ops: list[Any] = [
            ResizeShortEdge((test_short_edge,), test_max_size if test_max_size else default_max)
        ]
    else:
        sizes = (
            train_short_edge
            if train_short_edge is not None
            else default_train_short_edges(task, test_short_edge)
        )
        max_size = train_max_size if train_max_size else default_max
        ops = [ResizeShortEdge(sizes, max_size, generator=generator)]
        if crop_size is None and dense:
            crop_size = (test_short_edge, test_short_edge)
        if crop_size is not None:
            ops.append(DefectAwareCrop(crop_size, crop_defect_p, ignore_index, generator=generator))
        if color_aug_ssd:
            ops.append(ColorAugSSD(generator=generator))
        if flip:
            ops.append(RandomHorizontalFlip(0.5, generator=generator))
        if dense and crop_size is not None:
            ops.append(PadToSize(crop_size, M2F_IMAGE_PAD, ignore_index))
    if size_divisibility and size_divisibility > 1:
        ops.append(PadToDivisible(size_divisibility, 0, ignore_index))
    return Compose(ops)
