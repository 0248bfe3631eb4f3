"""Drawing helpers shared by the synthetic writers: smooth noise, masks, shapes, blending."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: tuple[float, float]) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise with correlation lengths ``cell`` = (rows, cols)."""
    gh, gw = max(2, math.ceil(h / cell[0]) + 2), max(2, math.ceil(w / cell[1]) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    up = Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32)


def new_mask(h: int, w: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    m = Image.new("L", (w, h), 0)
    return m, ImageDraw.Draw(m)


def as_bool(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask) > 127


def blend(img: np.ndarray, mask: np.ndarray, value: np.ndarray | float) -> None:
    """``img[mask] = value`` (float image, broadcast over channels when needed)."""
    if isinstance(value, np.ndarray) and value.shape[:2] == img.shape[:2]:
        img[mask] = value[mask]
    else:
        img[mask] = value


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def ellipse(draw: ImageDraw.ImageDraw, cy: float, cx: float, ry: float, rx: float, fill: int = 255) -> None:
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)


def rotated(
    points: list[tuple[float, float]], angle: float, cx: float, cy: float
) -> list[tuple[float, float]]:
    """Rotate (x, y) points (relative to 0, 0) by ``angle`` and translate to (cx, cy)."""
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]
