"""Synthetic Severstal: steel strips with 4 defect classes, ``train.csv`` RLE (current or old variant)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from raybench.data.severstal import rle_encode
from raybench.data.synth.shapes import as_bool, blend, ellipse, new_mask, smooth_noise, to_uint8


def _steel(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    img = 115 + 18 * smooth_noise(rng, h, w, (h / 3, w / 4))
    img += 7 * smooth_noise(rng, h, w, (1.5, w / 8))  # rolling streaks along the strip
    img += rng.normal(0, 4, (h, w))
    return img.astype(np.float32)


def _severstal_defect(rng: np.random.Generator, img: np.ndarray, cls: int, k: float = 1.0) -> np.ndarray:
    """Draw one defect of class ``cls`` into ``img``; ``k`` scales its size (object_scale)."""
    h, w = img.shape
    m, d = new_mask(h, w)
    if cls == 1:  # clusters of small dark pits
        cy, cx = rng.uniform(0.2 * h, 0.8 * h), rng.uniform(0.05 * w, 0.95 * w)
        for _ in range(rng.integers(3, 8)):
            r = min(rng.uniform(0.02, 0.045) * k, 0.2) * h
            spread = min(0.08 * k, 0.25) * h
            ellipse(d, cy + rng.normal(0, spread), cx + rng.normal(0, spread), r, r * rng.uniform(1, 1.8))
        mask = as_bool(m)
        blend(img, mask, img - 55)
    elif cls == 2:  # thin bright vertical scratches
        for _ in range(rng.integers(1, 3)):
            x = rng.uniform(0.05 * w, 0.95 * w)
            y0, y1 = rng.uniform(0, 0.3 * h), rng.uniform(0.7 * h, h)
            d.line(
                [(x, y0), (x + rng.normal(0, 0.05 * h), y1)],
                fill=255,
                width=max(2, int(min(0.03 * k, 0.2) * h)),
            )
        mask = as_bool(m)
        blend(img, mask, np.minimum(img + 70, 250))
    elif cls == 3:  # long horizontal scratch bands with fine texture
        length, thick = rng.uniform(0.15, 0.45) * w, min(rng.uniform(0.05, 0.14) * k, 0.4) * h
        x0, y = rng.uniform(0, w - length), rng.uniform(0.1 * h, 0.9 * h)
        pts = [
            (x0, y),
            (x0 + length / 2, y + rng.normal(0, 0.05 * h)),
            (x0 + length, y + rng.normal(0, 0.05 * h)),
        ]
        d.line(pts, fill=255, width=max(2, int(thick)))
        mask = as_bool(m)
        stripes = 25 * np.sign(np.sin(np.arange(h)[:, None] * 1.7 + np.zeros((1, w))))
        blend(img, mask, img + stripes + rng.normal(0, 10, img.shape))
    else:  # large dark smooth blobs
        ry, rx = min(rng.uniform(0.2, 0.4) * k, 0.45) * h, min(rng.uniform(0.3, 0.9) * k, 0.45 * w / h) * h
        ellipse(d, rng.uniform(0.3 * h, 0.7 * h), rng.uniform(rx, w - rx), ry, rx)
        m = m.filter(ImageFilter.GaussianBlur(0.02 * h))
        mask = as_bool(m)
        blend(img, mask, img * 0.45)
    return mask


def synth_severstal(
    out: Path,
    images: int,
    size: int,
    rng: np.random.Generator,
    object_scale: float = 1.0,
    csv_format: str = "current",
) -> None:
    if csv_format not in ("current", "old"):
        raise ValueError(f"severstal csv_format must be 'current' or 'old', got {csv_format!r}")
    h, w = size, round(size * 6.25)
    folder = out / "train_images"
    folder.mkdir(parents=True, exist_ok=True)
    n_clean = images // 5
    names: list[str] = []
    while len(names) < images:  # Kaggle-like 9-hex-digit ids
        name = f"{int(rng.integers(0, 16**9)):09x}"
        if name not in names:
            names.append(name)
    rows: list[tuple[str, int, str]] = []
    first = list(rng.permutation(4) + 1)
    for k, stem in enumerate(names):
        img = _steel(rng, h, w)
        classes: list[int] = []
        if k >= n_clean:
            j = k - n_clean
            classes.append(
                int(first[j]) if j < 4 else int(rng.choice([1, 2, 3, 4], p=[0.15, 0.1, 0.55, 0.2]))
            )
            if rng.random() < 0.15:
                classes.append(int(rng.choice([c for c in (1, 2, 3, 4) if c != classes[0]])))
        masks = {c: _severstal_defect(rng, img, c, object_scale) for c in sorted(set(classes))}
        file = f"{stem}.jpg"
        Image.fromarray(np.repeat(to_uint8(img)[..., None], 3, axis=2)).save(folder / file, quality=95)
        for c in (1, 2, 3, 4):
            rle = rle_encode(masks[c]) if c in masks and masks[c].any() else ""
            if rle or csv_format == "old":
                rows.append((file, c, rle))
    with (out / "train.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        if csv_format == "current":
            writer.writerow(["ImageId", "ClassId", "EncodedPixels"])
            writer.writerows(rows)
        else:
            writer.writerow(["ImageId_ClassId", "EncodedPixels"])
            writer.writerows((f"{f}_{c}", r) for f, c, r in rows)
