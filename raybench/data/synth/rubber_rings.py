"""Synthetic Rubber Rings: MVTec-style folders, one defect per image, ``_mask.png`` ground truth."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from raybench.data.rubber_rings import CLASS_NAMES as RUBBER_CLASSES
from raybench.data.synth.shapes import blend, ellipse, new_mask, rotated, smooth_noise, to_uint8


def _ring(rng: np.random.Generator, part: str, s: int) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    img = 70 + 10 * smooth_noise(rng, s, s, (s / 4, s / 4)) + rng.normal(0, 3, (s, s))
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    c = s / 2 + rng.normal(0, 0.01 * s, 2)
    if part == "Side":
        top, bottom = 0.35 * s + rng.normal(0, 0.01 * s), 0.65 * s + rng.normal(0, 0.01 * s)
        body = (yy > top) & (yy < bottom)
        shade = 45 + 25 * np.cos((yy - (top + bottom) / 2) / (bottom - top) * math.pi)
        geo = {"top": top, "bottom": bottom, "cy": c[0], "cx": c[1]}
    else:
        r_out, r_in = (0.45, 0.3) if part == "Large" else (0.3, 0.18)
        r = np.hypot(yy - c[0], xx - c[1])
        body = (r < r_out * s) & (r > r_in * s)
        mid = (r_out + r_in) / 2 * s
        shade = 40 + 30 * np.exp(-(((r - mid) / (0.05 * s)) ** 2))
        geo = {"r_out": r_out * s, "r_in": r_in * s, "cy": c[0], "cx": c[1]}
    img[body] = (shade + 4 * rng.normal(0, 1, (s, s)))[body]
    return img.astype(np.float32), body, geo


def _ring_point(
    rng: np.random.Generator, geo: dict[str, float], s: int, where: str = "mid"
) -> tuple[float, float]:
    if "top" in geo:
        y = {"mid": rng.uniform(geo["top"] + 0.05 * s, geo["bottom"] - 0.05 * s), "edge": geo["top"]}[where]
        return y, rng.uniform(0.15 * s, 0.85 * s)
    a = rng.uniform(0, 2 * math.pi)
    rad = {"mid": (geo["r_out"] + geo["r_in"]) / 2, "edge": geo["r_out"]}[where]
    return geo["cy"] + rad * math.sin(a), geo["cx"] + rad * math.cos(a)


def _rubber_defect(
    rng: np.random.Generator, img: np.ndarray, cls: str, geo: dict[str, float], k: float = 1.0
) -> Image.Image:
    """Draw one defect of class ``cls`` on the ring; ``k`` scales its size (object_scale)."""
    s = img.shape[0]
    z = s * k  # defect sizes below are fractions of the image side, times object_scale
    m, d = new_mask(s, s)
    y, x = _ring_point(rng, geo, s, "edge" if cls in ("Small_fins", "Side_boundary") else "mid")
    if cls == "Large_bubble":
        r = rng.uniform(0.025, 0.045) * z
        ellipse(d, y, x, r, r)
        value: Any = 175
    elif cls in ("Large_pit", "Small_pit"):
        r = rng.uniform(0.01, 0.02) * z * (1.0 if cls == "Large_pit" else 0.8)
        ellipse(d, y, x, r, r)
        value = 5
    elif cls == "Large_pressure":
        a = rng.uniform(0, math.pi)
        pts = rotated(
            [(-0.08 * z, -0.012 * z), (0.08 * z, -0.012 * z), (0.08 * z, 0.012 * z), (-0.08 * z, 0.012 * z)],
            a,
            x,
            y,
        )
        d.polygon(pts, fill=255)
        value = 120
    elif cls == "Large_wear":
        r = rng.uniform(0.04, 0.06) * z
        ellipse(d, y, x, r, r * 1.5)
        value = 60 + 45 * (rng.random(img.shape) > 0.5)
    elif cls == "Small_fins":
        a = math.atan2(y - geo["cy"], x - geo["cx"])
        pts = rotated([(0, -0.02 * z), (0.06 * z, -0.004 * z), (0.06 * z, 0.004 * z), (0, 0.02 * z)], a, x, y)
        d.polygon(pts, fill=255)
        value = 140
    elif cls == "Small_scratch":
        a = rng.uniform(0, math.pi)
        dx, dy = 0.06 * z * math.cos(a), 0.06 * z * math.sin(a)
        d.line([(x - dx, y - dy), (x + dx, y + dy)], fill=255, width=max(2, int(0.008 * z)))
        value = 200
    elif cls == "Side_holes":
        for _ in range(rng.integers(2, 5)):
            r = rng.uniform(0.008, 0.015) * z
            ellipse(d, y + rng.normal(0, 0.03 * z), x + rng.normal(0, 0.08 * z), r, r)
        value = 0
    else:  # Side_boundary: irregular bright band along the top edge
        x0 = rng.uniform(0.1 * s, 0.5 * s)
        pts = [(x0, y - 0.01 * z)]
        for j in range(1, 7):
            pts.append((x0 + j * 0.06 * z, y + rng.uniform(-0.015, 0.015) * z))
        pts += [(p[0], p[1] + 0.03 * z) for p in reversed(pts)]
        d.polygon(pts, fill=255)
        value = 160
    m = m.filter(ImageFilter.GaussianBlur(0.8))  # soft edges: the > 30 threshold decides
    blend(img, np.asarray(m) > 30, value)
    return m


def synth_rubber_rings(
    out: Path, images: int, size: int, rng: np.random.Generator, object_scale: float = 1.0
) -> None:
    s = size
    for k in range(images + 1):
        is_good = k == images
        cls = "good" if is_good else RUBBER_CLASSES[k % len(RUBBER_CLASSES)]
        part = "Large" if is_good else cls.split("_", 1)[0]
        defect = "good" if is_good else cls.split("_", 1)[1]
        img, _, geo = _ring(rng, part, s)
        img_dir = out / part / "images" / defect
        img_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{k // len(RUBBER_CLASSES):03d}"
        if not is_good:
            mask = _rubber_defect(rng, img, cls, geo, object_scale)
            gt_dir = out / part / "ground_truth" / defect
            gt_dir.mkdir(parents=True, exist_ok=True)
            mask.save(gt_dir / f"{stem}_mask.png")
        Image.fromarray(np.repeat(to_uint8(img)[..., None], 3, axis=2)).save(img_dir / f"{stem}.png")
