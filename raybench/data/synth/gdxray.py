"""Synthetic GDXray Castings: series folders with pores, ``ground_truth.txt`` in both number styles
(plain and MATLAB ``%e``), swapped corners in some series, one series without ground truth."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from raybench.data.synth.shapes import as_bool, blend, ellipse, new_mask, smooth_noise, to_uint8


def _casting(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 150 + 40 * (xx / w - 0.5) + 25 * smooth_noise(rng, h, w, (h / 3, w / 3))
    m, d = new_mask(h, w)
    for _ in range(rng.integers(2, 5)):  # thicker casting walls: darker smooth regions
        ellipse(
            d, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.15, 0.4) * h, rng.uniform(0.15, 0.4) * w
        )
    thick = np.asarray(m.filter(ImageFilter.GaussianBlur(0.05 * h)), dtype=np.float32) / 255
    img -= 55 * thick
    img += rng.normal(0, 3, (h, w))
    return img.astype(np.float32)


def synth_gdxray(
    out: Path,
    images: int,
    size: int,
    rng: np.random.Generator,
    object_scale: float = 1.0,
    contrast: float = 1.0,
) -> None:
    h, w = size, round(size * 768 / 572)
    n_val = max(1, round(images * 0.3))
    n_excl = 1 if images >= 6 else 0
    n_train = images - n_val - n_excl
    val_series = [3, 32, 45, 54, 61]
    train_series = [s for s in range(1, 80) if s not in (*val_series, 55, 87)]
    n_train_series = max(1, math.ceil(n_train / 4))
    plan: list[int] = [val_series[k % len(val_series)] for k in range(n_val)]
    plan += [55] * n_excl + [train_series[k % n_train_series] for k in range(n_train)]
    # position of each image within its split (val, excluded, train): every 3rd is defect-free
    position = list(range(n_val)) + list(range(n_excl)) + list(range(n_train))
    root = out / "Castings"
    counters: dict[int, int] = {}
    rows: dict[int, list[str]] = {}
    for series, j in zip(plan, position, strict=True):
        idx = counters[series] = counters.get(series, 0) + 1
        folder = root / f"C{series:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        img = _casting(rng, h, w)
        n_def = 0 if j % 3 == 2 else int(rng.integers(1, 4))
        lines = rows.setdefault(series, [])
        for _ in range(n_def):
            r = min(rng.uniform(0.012, 0.03) * object_scale, 0.2) * h
            cy, cx = rng.uniform(2 * r, h - 2 * r), rng.uniform(2 * r, w - 2 * r)
            m, d = new_mask(h, w)
            ellipse(d, cy, cx, r * rng.uniform(0.7, 1.0), r)
            mask = as_bool(m.filter(ImageFilter.GaussianBlur(0.3 * r)))
            step = 38 * contrast  # pores: less material, brighter (a quarter: inclusions, darker)
            blend(img, mask, img + (step if rng.random() < 0.75 else -step))
            x1, x2, y1, y2 = cx - r - 1, cx + r + 1, cy - r - 1, cy + r + 1
            if series % 2 == 0:
                y1, y2 = y2, y1  # some series store y swapped (normalised by the loader)
            if series % 3 == 0:
                lines.append(" ".join(f"{v:15.7e}" for v in (idx, x1, x2, y1, y2)))
            else:
                lines.append(f"{idx} {x1:.2f} {x2:.2f} {y1:.2f} {y2:.2f}")
        Image.fromarray(to_uint8(img)).save(folder / f"C{series:04d}_{idx:04d}.png")
    last_train = train_series[n_train_series - 1] if n_train >= 8 else None
    for series, lines in rows.items():
        if series != last_train:  # like C0056, one series ships no ground_truth.txt
            (root / f"C{series:04d}" / "ground_truth.txt").write_text("".join(ln + "\n" for ln in lines))
