"""Joint image/target transforms: resize, defect-aware crop, SSD colour distortion, flip, pad
(no normalisation: models normalise, see :mod:`raybench.models.semantic`).

Every transform maps ``(image uint8 [3,H,W], target) -> (image, target)`` and keeps
``sem_seg`` / ``masks`` / ``boxes`` aligned with the pixels. Randomness comes from torch
(``generator`` or, by default, the global RNG that DataLoader worker seeding controls),
so a pipeline is reproducible given a seed.

:class:`Compose` runs a :class:`ResizeShortEdge` directly followed by a
:class:`DefectAwareCrop` as one fused step: it chooses the crop in the resized frame and
resamples only the source window under it with the same scale and pixel grid. Masks and
boxes are exactly those of resize-then-crop, pixels too when the window origin can be
grid-aligned (else within half a pixel), at a fraction of the cost: resizing a 1600x256
Severstal image to up to 4800x768 just to keep 384x384 of it dominates otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as TF

Target = dict[str, Any]
#: Per-instance target entries that follow ``boxes`` when instances are dropped.
INSTANCE_KEYS: tuple[str, ...] = ("boxes", "labels", "masks", "area", "iscrowd")
MIN_BOX_SIZE = 1e-3  # boxes thinner than this (pixels) after a crop are dropped


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[low, high]`` (inclusive)."""
    if high <= low:
        return low
    return int(torch.randint(low, high + 1, (), generator=generator))


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _nearest_index(n_out: int, n_in: int, scale: float, start: int = 0) -> torch.Tensor:
    """Source index of output pixels ``start..start+n_out`` (pixel-centre nearest)."""
    pos = (torch.arange(start, start + n_out, dtype=torch.float64) + 0.5) / scale
    return pos.floor().clamp_(0, n_in - 1).to(torch.int64)


def _gather(t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``t[..., rows, :][..., cols]`` in the order that keeps the intermediate small."""
    if rows.numel() * t.shape[-1] <= t.shape[-2] * cols.numel():
        return t.index_select(-2, rows).index_select(-1, cols)
    return t.index_select(-1, cols).index_select(-2, rows)


def _filter_instances(target: Target, keep: torch.Tensor) -> Target:
    if bool(keep.all()):
        return target
    for key in INSTANCE_KEYS:
        if key in target and isinstance(target[key], torch.Tensor):
            target[key] = target[key][keep]
    return target


def _shift_clip_boxes(
    target: Target, scale: tuple[float, float], top: int, left: int, ch: int, cw: int
) -> Target:
    boxes = target.get("boxes")
    if boxes is None:
        return target
    sy, sx = scale
    b = boxes.to(torch.float32) * torch.tensor([sx, sy, sx, sy])
    b -= torch.tensor([left, top, left, top], dtype=torch.float32)
    b[:, 0::2] = b[:, 0::2].clamp(0, cw)
    b[:, 1::2] = b[:, 1::2].clamp(0, ch)
    target["boxes"] = b
    keep = ((b[:, 2] - b[:, 0]) > MIN_BOX_SIZE) & ((b[:, 3] - b[:, 1]) > MIN_BOX_SIZE)
    return _filter_instances(target, keep)


def resize(image: torch.Tensor, target: Target, size: tuple[int, int]) -> tuple[torch.Tensor, Target]:
    """Resize to ``size`` = (H, W): bilinear (antialiased) image, nearest masks, scaled boxes."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    nh, nw = size
    if (nh, nw) == (h, w):
        return image, target
    target = dict(target)
    image = TF.resize(image, [nh, nw], antialias=True)
    sy, sx = nh / h, nw / w
    rows, cols = _nearest_index(nh, h, sy), _nearest_index(nw, w, sx)
    for key in ("sem_seg", "masks"):
        if key in target:
            target[key] = _gather(target[key], rows, cols)
    if "boxes" in target:
        target["boxes"] = target["boxes"].to(torch.float32) * torch.tensor([sx, sy, sx, sy])
    return image, target


def crop(
    image: torch.Tensor, target: Target, top: int, left: int, height: int, width: int
) -> tuple[torch.Tensor, Target]:
    """Crop a window; boxes are shifted, clipped and dropped when degenerate."""
    target = dict(target)
    image = image[..., top : top + height, left : left + width].contiguous()
    for key in ("sem_seg", "masks"):
        if key in target:
            target[key] = target[key][..., top : top + height, left : left + width].contiguous()
    return image, _shift_clip_boxes(target, (1.0, 1.0), top, left, height, width)


class ResizeShortEdge:
    """Resize so the short edge is one of ``sizes`` (random choice), long edge <= ``max_size``."""

    def __init__(
        self,
        sizes: int | Sequence[int],
        max_size: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.sizes = (int(sizes),) if isinstance(sizes, int) else tuple(int(s) for s in sizes)
        if not self.sizes or min(self.sizes) <= 0:
            raise ValueError(f"ResizeShortEdge sizes must be positive, got {sizes!r}")
        self.max_size = max_size
        self.generator = generator

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """Draw a short edge and return the resized (H, W)."""
        size = self.sizes[_randint(0, len(self.sizes) - 1, self.generator)]
        scale = size / min(h, w)
        if self.max_size is not None and max(h, w) * scale > self.max_size:
            scale = self.max_size / max(h, w)
        return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        return resize(image, target, self.output_size(int(image.shape[-2]), int(image.shape[-1])))

    def __repr__(self) -> str:
        return f"ResizeShortEdge(sizes={self.sizes}, max_size={self.max_size})"


class DefectAwareCrop:
    """Crop ``size`` (H, W); with probability ``p`` the crop contains part of a defect.

    A defect is any pixel of ``sem_seg`` that is neither 0 nor ``ignore_index``, or any box.
    One defect point is drawn uniformly (a defect pixel, or a point inside a random box) and
    the crop offset is drawn uniformly among the offsets whose window contains it.
    Otherwise (probability ``1 - p``, or no defect) the offset is uniform: a random crop.
    Windows larger than the image shrink to the image.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        p: float = 0.7,
        ignore_index: int = 255,
        generator: torch.Generator | None = None,
    ) -> None:
        self.size = _pair(size)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"DefectAwareCrop p must be in [0, 1], got {p}")
        self.p = float(p)
        self.ignore_index = ignore_index
        self.generator = generator

    def defect_point(self, target: Target) -> tuple[float, float] | None:
        """A uniformly drawn defect location (y, x) in the target's pixel frame, or None."""
        g = self.generator
        sem = target.get("sem_seg")
        if sem is not None:
            w = int(sem.shape[-1])
            a = sem.reshape(-1).numpy()  # numpy: no intra-op thread overhead on small scans
            idx = np.flatnonzero((a != 0) & (a != self.ignore_index))
            if idx.size == 0:
                return None
            flat = int(idx[_randint(0, idx.size - 1, g)])
            return flat // w + _rand(g), flat % w + _rand(g)
        boxes = target.get("boxes")
        if boxes is not None and len(boxes):
            x1, y1, x2, y2 = (float(v) for v in boxes[_randint(0, len(boxes) - 1, g)])
            return y1 + _rand(g) * (y2 - y1), x1 + _rand(g) * (x2 - x1)
        return None

    def choose(
        self, h: int, w: int, target: Target, scale: tuple[float, float] = (1.0, 1.0)
    ) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the crop in an ``h x w`` frame; ``target`` is in a
        frame that ``scale`` = (sy, sx) maps onto it (the source frame when fused with a resize)."""
        g = self.generator
        ch, cw = min(self.size[0], h), min(self.size[1], w)
        point = self.defect_point(target) if _rand(g) < self.p else None
        if point is None:
            return _randint(0, h - ch, g), _randint(0, w - cw, g), ch, cw
        oy = min(max(int(point[0] * scale[0]), 0), h - 1)
        ox = min(max(int(point[1] * scale[1]), 0), w - 1)
        top = _randint(max(0, oy - ch + 1), min(oy, h - ch), g)
        left = _randint(max(0, ox - cw + 1), min(ox, w - cw), g)
        return top, left, ch, cw

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        top, left, ch, cw = self.choose(int(image.shape[-2]), int(image.shape[-1]), target)
        return crop(image, target, top, left, ch, cw)

    def __repr__(self) -> str:
        return f"DefectAwareCrop(size={self.size}, p={self.p})"


def _aligned_start(start: int, end: int, n_out: int, n_in: int) -> int:
    """Move ``start`` down to a multiple of q (``start * n_out / n_in`` whole) if that at
    most triples the window ``[start, end)``; else keep it."""
    q = n_in // math.gcd(n_out, n_in)
    aligned = (start // q) * q
    return aligned if end - aligned <= 3 * (end - start) else start


def resize_then_crop(
    resize_t: ResizeShortEdge, crop_t: DefectAwareCrop, image: torch.Tensor, target: Target
) -> tuple[torch.Tensor, Target]:
    """``crop_t(resize_t(x))`` computed on the source window under the crop only."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    nh, nw = resize_t.output_size(h, w)
    sy, sx = nh / h, nw / w
    top, left, ch, cw = crop_t.choose(nh, nw, target, scale=(sy, sx))
    margin = 2  # output pixels of context so the antialiasing filter sees real neighbours
    y1 = min(h, math.ceil((top + ch + margin) / sy))
    x1 = min(w, math.ceil((left + cw + margin) / sx))
    y0 = _aligned_start(max(0, math.floor((top - margin) / sy)), y1, nh, h)
    x0 = _aligned_start(max(0, math.floor((left - margin) / sx)), x1, nw, w)
    # Resampling the window with the exact scale keeps the global pixel grid; the window
    # origin is aligned so that y0 * sy is whole (else rounded: at most half a pixel off).
    window = nnf.interpolate(
        image[None, :, y0:y1, x0:x1],
        scale_factor=(sy, sx),
        mode="bilinear",
        align_corners=False,
        antialias=True,
        recompute_scale_factor=False,
    )[0]
    oy, ox = max(0, round(top - y0 * sy)), max(0, round(left - x0 * sx))
    if oy + ch > window.shape[-2] or ox + cw > window.shape[-1]:  # float rounding at an edge
        full_image, full_target = resize(image, target, (nh, nw))
        return crop(full_image, full_target, top, left, ch, cw)
    out = window[..., oy : oy + ch, ox : ox + cw].contiguous()
    target = dict(target)
    rows, cols = _nearest_index(ch, h, sy, top), _nearest_index(cw, w, sx, left)
    for key in ("sem_seg", "masks"):
        if key in target:
            target[key] = _gather(target[key], rows, cols)
    return out, _shift_clip_boxes(target, (sy, sx), top, left, ch, cw)


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        self.p = float(p)
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if not _rand(self.generator) < self.p:
            return image, target
        target = dict(target)
        w = int(image.shape[-1])
        image = image.flip(-1)
        for key in ("sem_seg", "masks"):
            if key in target:
                target[key] = target[key].flip(-1)
        if "boxes" in target:
            b = target["boxes"].clone()
            b[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
            target["boxes"] = b
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


# --- SSD colour distortion (Mask2Former's INPUT.COLOR_AUG_SSD) ------------------------------
# OpenCV's 8-bit HSV, reimplemented in torch so that the augmentation follows the reference
# (Detectron2's ``ColorAugSSDTransform`` calls cv2.cvtColor on uint8 images) pixel for pixel:
# H in 0..179 (degrees / 2), S and V in 0..255. RGB -> HSV is cv2's 12-bit fixed-point code
# (rounded division tables). HSV -> RGB is float32 with fused multiply-adds; cv2 converts each
# row in SIMD blocks that truncate to uint8 and the row's last ``width % block`` pixels in
# scalar code that rounds (block = 64 pixels in its AVX-512 build, 32 with AVX2 only).
#: Pixels per SIMD block of cv2's uint8 HSV -> RGB row loop (AVX-512 dispatch: 4 x 16 lanes).
CV2_HSV_BLOCK = 64
_HSV_SHIFT = 12
_HSV_HALF = 1 << (_HSV_SHIFT - 1)
_HUE_RANGE = 180


def _hsv_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """cv2's ``sdiv_table`` (255 << 12 / v) and ``hdiv_table180`` (180 << 12 / 6d), 0 at 0."""
    n = torch.arange(256, dtype=torch.float64).clamp(min=1)
    sdiv = torch.round((255 << _HSV_SHIFT) / n).to(torch.int64)
    hdiv = torch.round((_HUE_RANGE << _HSV_SHIFT) / (6 * n)).to(torch.int64)
    sdiv[0] = hdiv[0] = 0
    return sdiv, hdiv


_SDIV, _HDIV = _hsv_tables()


def rgb_to_hsv_u8(image: torch.Tensor) -> torch.Tensor:
    """uint8 RGB ``[3, H, W]`` -> uint8 HSV as ``cv2.cvtColor(bgr, COLOR_BGR2HSV)`` gives it."""
    r, g, b = image.to(torch.int64).unbind(0)
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    s = (diff * _SDIV[v] + _HSV_HALF) >> _HSV_SHIFT
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + _HSV_HALF) >> _HSV_SHIFT  # arithmetic shift: floor, as cv2's int code
    h = torch.where(h < 0, h + _HUE_RANGE, h)
    return torch.stack([h, s, v]).to(torch.uint8)


# cv2's HSV2RGB sectors: indices into (v, v(1-s), v(1-sf), v(1-s(1-f))) for (b, g, r).
_SECTOR_BGR = torch.tensor([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])


def hsv_to_rgb_u8(hsv: torch.Tensor, block: int = CV2_HSV_BLOCK) -> torch.Tensor:
    """uint8 HSV ``[3, H, W]`` (cv2's ranges) -> uint8 RGB as ``cv2.cvtColor(.., COLOR_HSV2BGR)``
    (columns past the last whole ``block`` of a row rounded, the others truncated, as cv2)."""
    f32 = torch.float32
    h, s, v = hsv.to(f32).unbind(0)
    s = s * torch.tensor(1.0 / 255.0, dtype=f32)
    v = v * torch.tensor(1.0 / 255.0, dtype=f32)
    h = h * torch.tensor(6.0 / _HUE_RANGE, dtype=f32)
    pre = h.trunc()
    f = h - pre
    sector = pre - (pre * torch.tensor(1.0 / 6.0, dtype=f32)).trunc() * 6.0
    # 1 - s * x as one fused multiply-add (cv2's AVX2 / AVX-512 code is compiled with FMA):
    # float64 then one rounding to float32 gives the FMA's result for every uint8 input (checked
    # exhaustively against cv2 4.14).
    sf = (1 - s.double() * f.double()).to(f32)
    sf1 = (1 - s.double() * (1 - f).double()).to(f32)
    tab = torch.stack([v, v * (1 - s), v * sf, v * sf1])
    idx = _SECTOR_BGR[sector.to(torch.int64)]  # [H, W, 3]: the tab entry of b, g, r
    bgr = tab.gather(0, idx.permute(2, 0, 1))
    rgb = bgr.flip(0) * 255.0
    width = int(rgb.shape[-1])
    simd = width - width % block
    out = rgb.trunc()
    if simd < width:  # scalar tail: cv2's saturate_cast rounds half to even, as torch.round
        out[..., simd:] = rgb[..., simd:].round()
    return out.clamp_(0, 255).to(torch.uint8)


def _scale_shift_u8(image: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    """``clip(x * alpha + beta, 0, 255)`` in float32, truncated to uint8 (the reference's ``convert``)."""
    return (image.to(torch.float32) * alpha + beta).clamp_(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class ColorParams:
    """One draw of :class:`ColorAugSSD`; None = that step is skipped."""

    brightness: float | None = None  # added to every channel
    contrast_first: bool = True
    contrast: float | None = None  # every channel multiplied by it
    saturation: float | None = None  # HSV S multiplied by it
    hue: int | None = None  # added to HSV H (mod 180)


class ColorAugSSD:
    """SSD photometric distortion, as Detectron2's ``ColorAugSSDTransform`` (Mask2Former's
    ``INPUT.COLOR_AUG_SSD``); image only, targets untouched.

    Brightness (p = 0.5, add U(-32, 32)), then, in a random one of two orders, contrast
    (p = 0.5, multiply by U(0.5, 1.5)) before or after saturation (p = 0.5, HSV S times
    U(0.5, 1.5)) and hue (p = 0.5, HSV H + randint(-18, 18) mod 180, OpenCV's half-degree
    units). Every step clips to 0..255 and truncates to uint8, as the reference; the draws
    come from ``generator``, in the reference's order (it uses Python's ``random``).
    """

    def __init__(
        self,
        brightness_delta: float = 32.0,
        contrast: tuple[float, float] = (0.5, 1.5),
        saturation: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        generator: torch.Generator | None = None,
    ) -> None:
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = (float(contrast[0]), float(contrast[1]))
        self.saturation_range = (float(saturation[0]), float(saturation[1]))
        self.hue_delta = int(hue_delta)
        self.generator = generator

    def draw(self) -> ColorParams:
        """Coin flips (p = 0.5) and values, drawn in the order the reference draws them."""
        g = self.generator

        def coin() -> bool:
            return _rand(g) < 0.5

        def uniform(low: float, high: float) -> float:
            return low + (high - low) * _rand(g)

        d = self.brightness_delta
        brightness = uniform(-d, d) if coin() else None
        contrast_first = coin()
        draws: dict[str, Any] = {}
        order = ("contrast", "saturation", "hue") if contrast_first else ("saturation", "hue", "contrast")
        for step in order:
            if not coin():
                draws[step] = None
            elif step == "hue":
                draws[step] = _randint(-self.hue_delta, self.hue_delta, g)
            else:
                draws[step] = uniform(*getattr(self, f"{step}_range"))
        return ColorParams(brightness, contrast_first, **draws)

    @staticmethod
    def apply(image: torch.Tensor, p: ColorParams) -> torch.Tensor:
        """``image`` (uint8 RGB ``[3, H, W]``) distorted by the drawn ``p``."""

        def contrast(x: torch.Tensor) -> torch.Tensor:
            return x if p.contrast is None else _scale_shift_u8(x, alpha=p.contrast)

        def saturation_hue(x: torch.Tensor) -> torch.Tensor:
            if p.saturation is not None:  # each step converts to HSV and back, as the reference
                hsv = rgb_to_hsv_u8(x)
                hsv[1] = _scale_shift_u8(hsv[1], alpha=p.saturation)
                x = hsv_to_rgb_u8(hsv)
            if p.hue is not None:
                hsv = rgb_to_hsv_u8(x)
                hsv[0] = ((hsv[0].to(torch.int64) + p.hue) % _HUE_RANGE).to(torch.uint8)
                x = hsv_to_rgb_u8(hsv)
            return x

        if p.brightness is not None:
            image = _scale_shift_u8(image, beta=p.brightness)
        if p.contrast_first:
            return saturation_hue(contrast(image))
        return contrast(saturation_hue(image))

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(
                f"ColorAugSSD needs a uint8 RGB image [3, H, W], got {image.dtype} {tuple(image.shape)}"
            )
        return self.apply(image, self.draw()), target

    def __repr__(self) -> str:
        return (
            f"ColorAugSSD(brightness_delta={self.brightness_delta}, contrast={self.contrast_range}, "
            f"saturation={self.saturation_range}, hue_delta={self.hue_delta})"
        )


#: What Mask2Former's semantic dataset mapper pads a training image with (uint8, before the
#: model normalises it): ``F.pad(image, ..., value=128)`` in ``MaskFormerSemanticDatasetMapper``.
M2F_IMAGE_PAD = 128


def _pad_bottom_right(
    image: torch.Tensor, target: Target, ph: int, pw: int, fill: int, seg_fill: int
) -> tuple[torch.Tensor, Target]:
    """Pad ``ph`` rows and ``pw`` columns at the bottom/right: the image with ``fill``,
    ``sem_seg`` with ``seg_fill`` (ignore), instance masks with 0 (the pad is in no object)."""
    target = dict(target)
    image = nnf.pad(image, (0, pw, 0, ph), value=fill)
    if "sem_seg" in target:
        target["sem_seg"] = nnf.pad(target["sem_seg"], (0, pw, 0, ph), value=seg_fill)
    if "masks" in target:
        target["masks"] = nnf.pad(target["masks"], (0, pw, 0, ph), value=0)
    return image, target


class PadToSize:
    """Pad bottom/right up to ``size`` (H, W): image with ``fill``, ``sem_seg`` with ``seg_fill``.

    Mask2Former's semantic mapper pads every training crop to ``INPUT.SIZE_DIVISIBILITY`` (the
    crop size in its ADE20K recipe) with 128 and the ignore label, so a crop cut from an image
    smaller than the crop still yields a full-size, fixed-shape sample. Larger inputs are kept.
    """

    def __init__(self, size: int | Sequence[int], fill: int = M2F_IMAGE_PAD, seg_fill: int = 255) -> None:
        self.size, self.fill, self.seg_fill = _pair(size), int(fill), int(seg_fill)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        h, w = int(image.shape[-2]), int(image.shape[-1])
        ph, pw = max(0, self.size[0] - h), max(0, self.size[1] - w)
        if not ph and not pw:
            return image, target
        return _pad_bottom_right(image, target, ph, pw, self.fill, self.seg_fill)

    def __repr__(self) -> str:
        return f"PadToSize(size={self.size}, fill={self.fill}, seg_fill={self.seg_fill})"


class PadToDivisible:
    """Pad bottom/right so H and W are multiples of ``divisor`` (``sem_seg`` with ``seg_fill``)."""

    def __init__(self, divisor: int = 32, fill: int = 0, seg_fill: int = 255) -> None:
        self.divisor, self.fill, self.seg_fill = int(divisor), fill, seg_fill

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        h, w = int(image.shape[-2]), int(image.shape[-1])
        ph, pw = (-h) % self.divisor, (-w) % self.divisor
        if not ph and not pw:
            return image, target
        return _pad_bottom_right(image, target, ph, pw, self.fill, self.seg_fill)

    def __repr__(self) -> str:
        return f"PadToDivisible(divisor={self.divisor})"


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
