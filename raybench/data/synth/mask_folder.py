"""Synthetic mask folder: ``images/`` + ``masks/`` PNG class ids, ``classes.txt``, an ignore band."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from raybench.data.synth.shapes import as_bool, ellipse, new_mask, smooth_noise, to_uint8


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
