"""Synthetic generic COCO: two annotation files with non-contiguous category ids and polygons."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from raybench.data.synth.shapes import as_bool, new_mask, rotated, smooth_noise, to_uint8

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
