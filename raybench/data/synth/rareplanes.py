"""Synthetic RarePlanes: tiles with planes and the per-object attribute records of the real JSON
(civil roles = the classes, military roles outside them, every 4th tile empty)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from raybench.data.rareplanes import ANNOTATION_FILES as RAREPLANES_FILES
from raybench.data.synth.options import positive_at_most
from raybench.data.synth.shapes import as_bool, new_mask, rotated, smooth_noise, to_uint8

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


#: Largest ``plane_width``: wider, a plane's outline stops looking like one.
MAX_PLANE_WIDTH = 5.0


def _plane_polygon(length: float, wing_type: str, width: float = 1.0) -> list[tuple[float, float]]:
    """Outline (x forward) of a plane: fuselage, wings (straight or swept) and tail.

    ``width`` multiplies the fuselage's width and the wings' chord (1 = a real plane's
    proportions: the outline fills ~25 % of its box); the wings stay centred where they were.
    """
    L, f = length, length * 0.06 * width
    span = L * (1.1 if wing_type == "straight" else 0.95)
    sweep = 0.0 if wing_type == "straight" else 0.22 * L
    chord = 0.12 * L * width
    wx = 0.1 * L + (chord - 0.12 * L) / 2
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


def check_plane_width(value: Any) -> float:
    """``plane_width`` as a float in (0, MAX_PLANE_WIDTH], or a ValueError saying what is expected."""
    return positive_at_most("plane_width", value, MAX_PLANE_WIDTH, "1 = real planes' proportions")


def synth_rareplanes(
    out: Path,
    images: int,
    size: int,
    rng: np.random.Generator,
    object_scale: float = 1.0,
    plane_width: float = 1.0,
) -> None:
    """Tiles of ``size`` px; ``plane_width`` (in (0, 5], 1 = real proportions) thickens the planes.

    At real proportions a plane fills a quarter of its box, and a random-init Mask R-CNN
    trained for ~60 steps learns that prior and predicts empty masks; the smoke study draws
    them 3.5x as wide so its mask AP leaves 0.
    """
    width = check_plane_width(plane_width)
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
                poly = rotated(_plane_polygon(length, wing, width), rng.uniform(0, 2 * math.pi), cx, cy)
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
