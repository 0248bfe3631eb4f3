"""SSD colour distortion (Mask2Former's ``INPUT.COLOR_AUG_SSD``), image only.

OpenCV's 8-bit HSV is reimplemented in torch so that the augmentation follows the reference
(Detectron2's ``ColorAugSSDTransform`` calls cv2.cvtColor on uint8 images) pixel for pixel:
H in 0..179 (degrees / 2), S and V in 0..255. RGB -> HSV is cv2's 12-bit fixed-point code
(rounded division tables). HSV -> RGB is float32 with fused multiply-adds; cv2 converts each
row in SIMD blocks that truncate to uint8 and the row's last ``width % block`` pixels in
scalar code that rounds (block = 64 pixels in its AVX-512 build, 32 with AVX2 only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from raybench.data.transforms.common import Target, rand, randint

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
            return rand(g) < 0.5

        def uniform(low: float, high: float) -> float:
            return low + (high - low) * rand(g)

        d = self.brightness_delta
        brightness = uniform(-d, d) if coin() else None
        contrast_first = coin()
        draws: dict[str, Any] = {}
        order = ("contrast", "saturation", "hue") if contrast_first else ("saturation", "hue", "contrast")
        for step in order:
            if not coin():
                draws[step] = None
            elif step == "hue":
                draws[step] = randint(-self.hue_delta, self.hue_delta, g)
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
