"""Joint image/target transforms: resize, defect-aware crop, SSD colour distortion, flip, pad.

Every transform maps ``(image uint8 [3,H,W], target) -> (image, target)`` and keeps
``sem_seg`` / ``masks`` / ``boxes`` aligned with the pixels; randomness comes from a seeded
torch generator. Modules: :mod:`.geometric` (resize, crop, their fused form, flip),
:mod:`.color` (``ColorAugSSD``, cv2-exact HSV), :mod:`.pad` (pad to a size or a multiple),
:mod:`.pipeline` (``Compose``, ``build_transforms``).
"""

from raybench.data.transforms.color import (
    CV2_HSV_BLOCK,
    ColorAugSSD,
    ColorParams,
    hsv_to_rgb_u8,
    rgb_to_hsv_u8,
)
from raybench.data.transforms.common import Target
from raybench.data.transforms.geometric import (
    DefectAwareCrop,
    RandomHorizontalFlip,
    ResizeShortEdge,
    crop,
    resize,
    resize_then_crop,
)
from raybench.data.transforms.pad import M2F_IMAGE_PAD, PadToDivisible, PadToSize
from raybench.data.transforms.pipeline import Compose, build_transforms, default_train_short_edges

__all__ = [
    "CV2_HSV_BLOCK",
    "M2F_IMAGE_PAD",
    "ColorAugSSD",
    "ColorParams",
    "Compose",
    "DefectAwareCrop",
    "PadToDivisible",
    "PadToSize",
    "RandomHorizontalFlip",
    "ResizeShortEdge",
    "Target",
    "build_transforms",
    "crop",
    "default_train_short_edges",
    "hsv_to_rgb_u8",
    "resize",
    "resize_then_crop",
    "rgb_to_hsv_u8",
]
