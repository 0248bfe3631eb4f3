"""Small synthetic copies of every dataset, written in exactly the real on-disk format.

They exist so the whole pipeline (loaders, ``data check``, training smoke runs, the
throughput benchmark) runs without the real data. Defects are *learnable*: each class has
its own shape, size and intensity on a noisy textured background, roughly like the real
ones. Output is a pure function of ``(name, images, size, seed, options)``.

Like the real data they hold what the loaders' policies act on: images without any
annotation (GDXray, RarePlanes, COCO: every 3rd / 4th image of a split) and RarePlanes
objects whose role is outside the three civil classes (military roles).

A folder written here carries a marker file (:data:`MARKER`); writing again into it clears
it first, and a non-empty folder without the marker is refused (stale files would mix in).

``size`` is the image height (Severstal width = 6.25 x height as 1600x256; GDXray width =
768/572 x height); square tiles otherwise. ``size=None`` uses the real size.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from raybench.data.rareplanes import ANNOTATION_FILES as RAREPLANES_FILES
from raybench.data.rubber_rings import CLASS_NAMES as RUBBER_CLASSES
from raybench.data.severstal import rle_encode

DEFAULT_SIZE = {
    "severstal": 256,
    "rubber_rings": 512,
    "rareplanes": 512,
    "gdxray": 572,
    "coco": 256,
    "mask_folder": 256,
}
MIN_IMAGES = {"rubber_rings": 3}
#: Largest ``object_scale``: beyond it most objects would only be clamped to the image.
MAX_OBJECT_SCALE = 10.0


# --- drawing helpers ----------------------------------------------------------------------
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


def _check(name: str, images: int) -> None:
    need = MIN_IMAGES.get(name, 2)
    if images < need:
        raise ValueError(
            f"synthesize {name}: need at least {need} images so both splits are non-empty, got {images}"
        )


# --- Severstal ------------------------------------------------------------------------------
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


# --- Rubber Rings ---------------------------------------------------------------------------
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


# --- RarePlanes -----------------------------------------------------------------------------
#: (role, length / tile, wing type, engines, propulsion); the three civil roles are the classes.
ROLES = (
    ("Small Civil Transport/Utility", 0.045, "straight", 1, "propeller"),
    ("Medium Civil Transport/Utility", 0.09, "swept", 2, "jet"),
    ("Large Civil Transport/Utility", 0.16, "swept", 4, "jet"),
)
#: Roles outside the 3 classes, as in the real annotations (role ids 4..7).
MILITARY = (
    ("Military Transport/Utility/AWAC", 0.14, "straight", 4, "propeller"),
    ("Military Fighter/Interceptor/Attack", 0.06, "swept", 1, "jet"),
    ("Military Bomber", 0.15, "swept", 4, "jet"),
    ("Military Trainer", 0.04, "straight", 1, "propeller"),
)


def _tile_roles(rng: np.random.Generator, j: int, military_counter: list[int]) -> list[tuple]:
    """Planes of tile ``j`` of a split: every 4th tile empty, tiles 5, 13, ... military only,
    tiles 2, 6, ... one military plane among civil ones, else 1-4 civil planes."""
    if j % 4 == 3:
        return []

    def military() -> tuple:
        military_counter[0] += 1
        return MILITARY[(military_counter[0] - 1) % len(MILITARY)]

    if j % 8 == 5:
        return [military() for _ in range(int(rng.integers(1, 3)))]
    civil = [ROLES[int(rng.choice(3, p=[0.5, 0.35, 0.15]))] for _ in range(int(rng.integers(1, 4)))]
    return civil + [military()] if j % 4 == 2 else civil


def _plane_polygon(length: float, wing_type: str) -> list[tuple[float, float]]:
    """Outline (x forward) of a plane: fuselage, wings (straight or swept) and tail."""
    L, f = length, length * 0.06
    span = L * (1.1 if wing_type == "straight" else 0.95)
    sweep = 0.0 if wing_type == "straight" else 0.22 * L
    chord = 0.12 * L
    wx = 0.1 * L
    tail = 0.35 * span
    return [
        (0.5 * L, 0),
        (0.42 * L, f),
        (wx, f),
        (wx - sweep, span / 2),
        (wx - sweep - chord, span / 2),
        (wx - chord * 1.5, f),
        (-0.38 * L, f),
        (-0.45 * L - 0.5 * sweep * 0.3, tail / 2),
        (-0.5 * L - 0.5 * sweep * 0.3, tail / 2),
        (-0.5 * L, 0),
        (-0.5 * L - 0.5 * sweep * 0.3, -tail / 2),
        (-0.45 * L - 0.5 * sweep * 0.3, -tail / 2),
        (-0.38 * L, -f),
        (wx - chord * 1.5, -f),
        (wx - sweep - chord, -span / 2),
        (wx - sweep, -span / 2),
        (wx, -f),
        (0.42 * L, -f),
    ]


def _ground(rng: np.random.Generator, s: int) -> np.ndarray:
    base = np.array([118, 112, 96], dtype=np.float32)
    img = base + 22 * smooth_noise(rng, s, s, (s / 6, s / 6))[..., None] + rng.normal(0, 5, (s, s, 3))
    m, d = new_mask(s, s)
    for _ in range(rng.integers(1, 3)):  # runways / aprons
        a = rng.uniform(0, math.pi)
        wd = rng.uniform(0.08, 0.2) * s
        pts = rotated(
            [(-s, -wd / 2), (s, -wd / 2), (s, wd / 2), (-s, wd / 2)], a, rng.uniform(0, s), rng.uniform(0, s)
        )
        d.polygon(pts, fill=255)
    img[as_bool(m)] = (np.array([88, 88, 90]) + rng.normal(0, 4, (s, s, 3)))[as_bool(m)]
    return img.astype(np.float32)


def synth_rareplanes(
    out: Path, images: int, size: int, rng: np.random.Generator, object_scale: float = 1.0
) -> None:
    s = size
    n_test = max(1, round(images * 0.25))
    plan = {"train": images - n_test, "test": n_test}
    meta = out / "real" / "metadata_annotations"
    meta.mkdir(parents=True, exist_ok=True)
    every_role = ROLES + MILITARY
    for split, count in plan.items():
        folder = out / "real" / split / "PS-RGB_tiled"
        folder.mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = {"images": [], "annotations": [], "categories": []}
        military_counter = [0]
        for k in range(count):
            img = _ground(rng, s)
            loc, cat = int(rng.integers(1, 120)), "".join(rng.choice(list("0123456789ABCDEF"), 16))
            file = f"{loc}_{cat}_tile_{k}.png"
            image_id = len(data["images"]) + 1
            data["images"].append({"id": image_id, "file_name": file, "width": s, "height": s})
            for role, rel, wing, engines, prop in _tile_roles(rng, k, military_counter):
                length = min(rel * object_scale, 0.7) * s * rng.uniform(0.85, 1.15)
                cx, cy = rng.uniform(0.6 * length, s - 0.6 * length, 2)
                poly = rotated(_plane_polygon(length, wing), rng.uniform(0, 2 * math.pi), cx, cy)
                shadow, sd = new_mask(s, s)
                sd.polygon([(x + 0.06 * length, y + 0.06 * length) for x, y in poly], fill=255)
                img[as_bool(shadow)] *= 0.6
                m, d = new_mask(s, s)
                d.polygon(poly, fill=255)
                img[as_bool(m)] = (
                    np.array([226, 228, 232]) - (0 if wing == "straight" else 25) + rng.normal(0, 4, 3)
                )
                xs, ys = [p[0] for p in poly], [p[1] for p in poly]
                x0, y0 = max(0.0, min(xs)), max(0.0, min(ys))
                bbox = [
                    round(x0, 2),
                    round(y0, 2),
                    round(min(s, max(xs)) - x0, 2),
                    round(min(s, max(ys)) - y0, 2),
                ]
                ann_id = len(data["annotations"]) + 1
                role_id = next(i for i, r in enumerate(every_role) if r[0] == role) + 1
                attrs = {
                    "role": role,
                    "role_id": role_id,
                    "num_engines": engines,
                    "propulsion": prop,
                    "wing_type": wing,
                    "wing_position": "mid/low mounted",
                    "canards": "no",
                    "num_tail_fins": 1,
                    "length": round(length * 0.3, 2),
                    "wingspan": round(length * 0.3, 2),
                    "faa_wingspan_class": 1 + min(5, int(rel * 30)),
                    "loc_id": loc,
                    "cat_id": cat,
                }
                data["annotations"].append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": ann_id,
                        "iscrowd": 0,
                        "bbox": bbox,
                        "area": round(bbox[2] * bbox[3], 2),
                        "segmentation": [[round(v, 2) for p in poly for v in p]],
                        **attrs,
                    }
                )
                data["categories"].append({"id": ann_id, "name": role, **attrs})
            Image.fromarray(to_uint8(img)).save(folder / file)
        key = "train" if split == "train" else "val"
        (meta / RAREPLANES_FILES[key]).write_text(json.dumps(data))


# --- GDXray ---------------------------------------------------------------------------------
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


# --- generic COCO ---------------------------------------------------------------------------
COCO_CATEGORIES = ({"id": 3, "name": "scratch"}, {"id": 5, "name": "dent"}, {"id": 9, "name": "stain"})


def _coco_object(rng: np.random.Generator, cat: int, s: int, k: float = 1.0) -> list[tuple[float, float]]:
    cx, cy = rng.uniform(0.2 * s, 0.8 * s, 2)
    if cat == 3:  # scratch: long thin bar
        a, L, t = rng.uniform(0, math.pi), min(rng.uniform(0.2, 0.4) * k, 0.6) * s, min(0.02 * k, 0.1) * s
        return rotated([(-L / 2, -t), (L / 2, -t), (L / 2, t), (-L / 2, t)], a, cx, cy)
    if cat == 5:  # dent: round (16-gon)
        r = min(rng.uniform(0.06, 0.12) * k, 0.2) * s
        return [
            (cx + r * math.cos(t), cy + r * math.sin(t))
            for t in np.linspace(0, 2 * math.pi, 16, endpoint=False)
        ]
    r = min(rng.uniform(0.08, 0.15) * k, 0.2) * s  # stain: irregular blob
    return [
        (cx + r * rng.uniform(0.6, 1.2) * math.cos(t), cy + r * rng.uniform(0.6, 1.2) * math.sin(t))
        for t in np.linspace(0, 2 * math.pi, 9, endpoint=False)
    ]


def synth_coco(
    out: Path, images: int, size: int, rng: np.random.Generator, object_scale: float = 1.0
) -> None:
    s = size
    n_val = max(1, round(images * 0.25))
    colours = {3: (235, 235, 235), 5: (40, 40, 45), 9: (150, 95, 40)}
    for split, count in (("train", images - n_val), ("val", n_val)):
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = {"images": [], "annotations": [], "categories": list(COCO_CATEGORIES)}
        for k in range(count):
            img = 128 + 20 * smooth_noise(rng, s, s, (s / 5, s / 5))[..., None] + rng.normal(0, 6, (s, s, 3))
            file = f"{split}_{k:05d}.jpg"
            data["images"].append({"id": 100 + k, "file_name": file, "width": s, "height": s})
            for _ in range(0 if k % 4 == 3 else int(rng.integers(1, 4))):  # every 4th: no object
                cat = int(rng.choice([3, 5, 9]))
                poly = _coco_object(rng, cat, s, object_scale)
                m, d = new_mask(s, s)
                d.polygon(poly, fill=255)
                img[as_bool(m)] = np.array(colours[cat]) + rng.normal(0, 5, 3)
                xs, ys = [p[0] for p in poly], [p[1] for p in poly]
                bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
                data["annotations"].append(
                    {
                        "id": len(data["annotations"]) + 1,
                        "image_id": 100 + k,
                        "category_id": cat,
                        "bbox": [round(v, 2) for v in bbox],
                        "area": round(bbox[2] * bbox[3], 2),
                        "iscrowd": 0,
                        "segmentation": [[round(v, 2) for p in poly for v in p]],
                    }
                )
            Image.fromarray(to_uint8(img)).save(folder / file, quality=95)
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


# --- generic mask folder --------------------------------------------------------------------
def synth_mask_folder(
    out: Path, images: int, size: int, rng: np.random.Generator, object_scale: float = 1.0
) -> None:
    s = size
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("background\ncrack\nspot\nstain\n")
    for k in range(images):
        img = 110 + 25 * smooth_noise(rng, s, s, (s / 4, s / 4))[..., None] + rng.normal(0, 5, (s, s, 3))
        sem = np.zeros((s, s), dtype=np.uint8)
        for cls in sorted(set(int(c) for c in rng.integers(1, 4, size=2))):
            m, d = new_mask(s, s)
            cy, cx = rng.uniform(0.15 * s, 0.85 * s, 2)
            if cls == 1:
                d.line(
                    [(cx - 0.25 * s, cy - 0.1 * s), (cx, cy + 0.05 * s), (cx + 0.25 * s, cy)],
                    fill=255,
                    width=max(2, int(s * min(object_scale, 6.0)) // 40),
                )
                colour: Any = (30, 30, 30)
            elif cls == 2:
                r = min(0.05 * object_scale, 0.2) * s
                ellipse(d, cy, cx, r, r)
                colour = (240, 240, 240)
            else:
                ellipse(d, cy, cx, min(0.12 * object_scale, 0.3) * s, min(0.18 * object_scale, 0.4) * s)
                colour = (160, 110, 60)
            mask = as_bool(m)
            img[mask] = np.array(colour) + rng.normal(0, 5, 3)
            sem[mask] = cls
        if k % 4 == 3:
            sem[: max(1, s // 32), :] = 255  # an ignore band (e.g. unlabelled border)
        Image.fromarray(to_uint8(img)).save(out / "images" / f"img_{k:04d}.png")
        Image.fromarray(sem).save(out / "masks" / f"img_{k:04d}.png")


SYNTHESIZERS: dict[str, Callable[..., None]] = {
    "severstal": synth_severstal,
    "rubber_rings": synth_rubber_rings,
    "rareplanes": synth_rareplanes,
    "gdxray": synth_gdxray,
    "coco": synth_coco,
    "mask_folder": synth_mask_folder,
}


#: Written at the top of every synthetic dataset; its presence allows clearing the folder.
MARKER = ".raybench-synth.json"


def _prepare_out(out: Path) -> None:
    """Create ``out``, or clear it if a previous ``synthesize`` wrote it; refuse anything else.

    Writing into a non-empty folder would leave stale images that the new annotations do not
    describe (they would then be read as unannotated, or shift the split)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"synthesize: {out} is a file, expected a folder")
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        if entries and MARKER not in entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise ValueError(
                f"synthesize: {out} is not empty ({len(entries)} entries: {shown}) and was not written by "
                "`raybench data synth` (no marker file); choose a new or empty folder, or delete it first"
            )
        for p in out.iterdir():  # written by synth before: clear, so no stale file survives
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _object_scale(value: Any) -> float:
    """``object_scale`` as a float in (0, MAX_OBJECT_SCALE], or a ValueError saying what is expected."""
    try:
        scale = float(value)
    except (TypeError, ValueError):
        scale = math.nan
    if isinstance(value, bool) or not 0 < scale <= MAX_OBJECT_SCALE:
        raise ValueError(
            f"synthesize: object_scale must be a number in (0, {MAX_OBJECT_SCALE:g}] "
            f"(1 = the real datasets' relative object sizes), got {value!r}"
        )
    return scale


def synthesize(
    name: str,
    out_dir: str | Path,
    images: int = 8,
    size: int | None = None,
    seed: int = 0,
    object_scale: float = 1.0,
    **options: Any,
) -> Path:
    """Write a synthetic ``name`` dataset with ``images`` images under ``out_dir``; returns it.

    ``object_scale`` multiplies the linear size of every defect / object (1 = the real
    datasets' relative sizes, clamped so an object still fits its image). At toy image sizes
    the real relative sizes give objects of 1-3 pixels that a randomly initialised backbone
    cannot learn in a few iterations; the smoke study sets a larger scale, the throughput
    benchmark keeps 1. Same ``object_scale`` = same output; 1 reproduces earlier datasets.

    Options: ``severstal``: ``csv_format="current"|"old"``; ``gdxray``: ``contrast`` (times the
    pores' grey-value step, 1 = the default look; the smoke study raises it so a random-init
    detector tells pores from the casting's smooth thickness variations). The result is readable by
    ``build_dataset(name, out_dir, split)`` for both splits (RarePlanes with
    ``unmapped="skip"``: it holds military roles). ``out_dir`` must be new, empty, or
    written by an earlier call (it is then cleared).
    """
    if name not in SYNTHESIZERS:
        raise ValueError(f"no synthesizer for {name!r}; known: {', '.join(sorted(SYNTHESIZERS))}")
    _check(name, images)
    allowed = {"severstal": {"csv_format"}, "gdxray": {"contrast"}}.get(name, set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown synth option(s) for {name!r}: {', '.join(unknown)}")
    size = DEFAULT_SIZE[name] if size is None else int(size)
    if size < 16:
        raise ValueError(f"synthesize: size must be >= 16 pixels, got {size}")
    scale = _object_scale(object_scale)
    out = Path(out_dir)
    _prepare_out(out)
    (out / MARKER).write_text(
        json.dumps(_record(name, images, size, seed, scale, options), sort_keys=True) + "\n"
    )
    SYNTHESIZERS[name](out, int(images), size, np.random.default_rng(seed), object_scale=scale, **options)
    return out


def _record(
    name: str, images: int, size: int, seed: int, scale: float, options: dict[str, Any]
) -> dict[str, Any]:
    """What the marker file says about the data (absent ``object_scale`` = 1: older markers stay valid)."""
    record = {"name": name, "images": int(images), "size": int(size), "seed": seed, "options": dict(options)}
    if scale != 1.0:
        record["object_scale"] = scale
    return record


def synthetic_is_current(root: Path, name: str, spec: Any) -> bool:
    """Whether ``root`` holds exactly the synthetic data ``spec`` (a study's ``synthetic:``
    block) asks for: its marker file records the same parameters."""
    try:
        written = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    size = DEFAULT_SIZE[name] if spec.size is None else int(spec.size)
    wanted = _record(name, spec.images, size, spec.seed, float(spec.object_scale), dict(spec.options))
    return written == wanted


def ensure_synthetic(root: str | Path, name: str, spec: Any) -> bool:
    """Write the synthetic dataset a study's ``synthetic:`` block asks for at ``root`` unless it
    is already there; returns whether data was written.

    A root written by an earlier ``synthesize`` with other parameters (an older study, another
    ``object_scale``) is replaced: training on stale synthetic data would be silent. A root
    without the marker (real or user data) is never touched. The data is written to a private
    temporary folder and renamed into place, so a reader never sees a partial root and
    concurrent writers (several trials) do not collide.
    """
    root = Path(root)
    if root.exists() and (not (root / MARKER).is_file() or synthetic_is_current(root, name, spec)):
        return False
    root.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = root.parent / f".{root.name}.tmp-{tag}"
    old = root.parent / f".{root.name}.old-{tag}"
    try:
        synthesize(
            name,
            tmp,
            images=spec.images,
            size=spec.size,
            seed=spec.seed,
            object_scale=spec.object_scale,
            **spec.options,
        )
        if root.exists():
            try:
                os.rename(root, old)  # a stale synthetic copy (checked above)
            except OSError:
                pass  # another writer moved it first
        try:
            os.rename(tmp, root)
        except OSError:
            if not root.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return True
