"""Bottom/right padding: fixed training size (Mask2Former's semantic mapper) or a multiple.

The image is padded with ``fill``, ``sem_seg`` with ``seg_fill`` (ignore), instance masks
with 0 (the pad is in no object); boxes keep their coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as nnf

from raybench.data.transforms.common import Target, as_pair

#: What Mask2Former's semantic dataset mapper pads a training image with (uint8, before the
#: model normalises it): ``F.pad(image, ..., value=128)`` in ``MaskFormerSemanticDatasetMapper``.
M2F_IMAGE_PAD = 128


class _PadBottomRight:
    """Pad ``padding(h, w)`` = (rows, columns) at the bottom/right; subclasses say how much."""

    fill: int
    seg_fill: int

    def padding(self, h: int, w: int) -> tuple[int, int]:
        raise NotImplementedError

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        ph, pw = self.padding(int(image.shape[-2]), int(image.shape[-1]))
        if not ph and not pw:
            return image, target
        target = dict(target)
        image = nnf.pad(image, (0, pw, 0, ph), value=self.fill)
        if "sem_seg" in target:
            target["sem_seg"] = nnf.pad(target["sem_seg"], (0, pw, 0, ph), value=self.seg_fill)
        if "masks" in target:
            target["masks"] = nnf.pad(target["masks"], (0, pw, 0, ph), value=0)
        return image, target


class PadToSize(_PadBottomRight):
    """Pad bottom/right up to ``size`` (H, W): image with ``fill``, ``sem_seg`` with ``seg_fill``.

    Mask2Former's semantic mapper pads every training crop to ``INPUT.SIZE_DIVISIBILITY`` (the
    crop size in its ADE20K recipe) with 128 and the ignore label, so a crop cut from an image
    smaller than the crop still yields a full-size, fixed-shape sample. Larger inputs are kept.
    """

    def __init__(self, size: int | Sequence[int], fill: int = M2F_IMAGE_PAD, seg_fill: int = 255) -> None:
        self.size, self.fill, self.seg_fill = as_pair(size), int(fill), int(seg_fill)

    def padding(self, h: int, w: int) -> tuple[int, int]:
        return max(0, self.size[0] - h), max(0, self.size[1] - w)

    def __repr__(self) -> str:
        return f"PadToSize(size={self.size}, fill={self.fill}, seg_fill={self.seg_fill})"


class PadToDivisible(_PadBottomRight):
    """Pad bottom/right so H and W are multiples of ``divisor`` (``sem_seg`` with ``seg_fill``)."""

    def __init__(self, divisor: int = 32, fill: int = 0, seg_fill: int = 255) -> None:
        self.divisor, self.fill, self.seg_fill = int(divisor), fill, seg_fill

    def padding(self, h: int, w: int) -> tuple[int, int]:
        return (-h) % self.divisor, (-w) % self.divisor

    def __repr__(self) -> str:
        return f"PadToDivisible(divisor={self.divisor})"
