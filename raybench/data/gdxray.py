"""GDXray Castings: ``Castings/Cssss/Cssss_nnnn.png`` + per-series ``ground_truth.txt`` boxes.

Each ground-truth row is ``image_index x1 x2 y1 y2`` (1-based image index, numbers may be
floats such as MATLAB's ``1.0000000e+00``); min/max are normalised because some series
have the corners swapped. The split is by series (the paper's val series by default).

Table 1 counts 706 train / 356 val images, far fewer than the castings in those series
(2727 in 67 series): the paper's splits are the images that carry boxes, hence the default
``empty_images: {train: drop, val: drop}`` (docs/datasets.md explains the reading).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from raybench.data.base import InspectionDataset, clip_boxes, detection_target
from raybench.data.errors import DatasetDataOptionError, DatasetFormatError, DatasetOptionError
from raybench.data.images import ImageInfo
from raybench.data.registry import register_dataset

_SERIES_RE = re.compile(r"^C(\d{4})$")


def series_ranges(values: Iterable[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"C0001..C0003, C0005"`` (compact lists in messages)."""
    ordered = sorted(set(values))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        a, b = f"C{ordered[i]:04d}", f"C{ordered[j]:04d}"
        parts.append(a if i == j else f"{a}..{b}")
        i = j + 1
    return ", ".join(parts) if parts else "none"


def parse_ground_truth(path: Path) -> list[tuple[int, list[float], int]]:
    """Rows of ``ground_truth.txt`` -> [(image_index, [x1, y1, x2, y2] normalised, line)]."""
    rows = []
    for line_no, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith(("#", "%")):
            continue
        tokens = text.replace(",", " ").split()
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            values = []
        if len(values) != 5:
            raise DatasetFormatError(
                f"{path} line {line_no}: expected 5 numbers 'image_index x1 x2 y1 y2', got {text!r}"
            )
        if not all(math.isfinite(v) for v in values):
            raise DatasetFormatError(f"{path} line {line_no}: non-finite number (nan/inf) in {text!r}")
        index, x1, x2, y1, y2 = values
        if index != int(index) or index < 1:
            raise DatasetFormatError(
                f"{path} line {line_no}: image_index {tokens[0]!r} is not a positive integer"
            )
        rows.append((int(index), [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], line_no))
    return rows


def as_series(values: Any, option: str) -> set[int]:
    """Series numbers from ``[3, "C0032", ...]``; anything else names the option and item."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise DatasetOptionError(option, f"expected a list of series numbers (e.g. [3, 32]), got {values!r}")
    out = set()
    for i, v in enumerate(values):
        text = str(v).strip().upper()
        text = text[1:] if text.startswith("C") else text
        if isinstance(v, bool) or isinstance(v, float) or not text.isdigit() or int(text) < 1:
            raise DatasetOptionError(option, f"{v!r} is not a series number (e.g. 3 or 'C0003'; item {i})")
        out.add(int(text))
    return out


@register_dataset("gdxray")
class GDXrayDataset(InspectionDataset):
    """GDXray Castings detection, one class ("defect"); images without boxes are dropped by
    default (Table 1's 706 / 356 are the images that carry boxes)."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "val_series": (3, 32, 45, 54, 61, 87),  # the paper's val series
        "exclude_series": (55,),
        "empty_images": {"train": "drop", "val": "drop"},
        "skip_unreadable": True,
    }
    task = "detection"
    num_classes = 1
    PAPER_SPLIT_SIZES: ClassVar[tuple[int, int] | None] = (706, 356)

    @classmethod
    def validate_options(cls, options: Any) -> None:
        super().validate_options(options)
        val = as_series(options.get("val_series", cls.OPTIONS["val_series"]), "val_series")
        excluded = as_series(options.get("exclude_series", cls.OPTIONS["exclude_series"]), "exclude_series")
        both = sorted(val & excluded)
        if both:
            raise DatasetOptionError(
                "val_series",
                f"series {series_ranges(both)} also in exclude_series: a series is either validation "
                "or excluded (train and val must not overlap, and an excluded series is in neither)",
            )

    def __init__(
        self,
        root: Path,
        split: str,
        transforms: Any,
        *,
        val_series: Iterable[Any],
        exclude_series: Iterable[Any],
        empty_images: Mapping[str, str],
        skip_unreadable: bool,
    ) -> None:
        super().__init__(root, split, transforms, locals())
        self.class_names = ["defect"]
        base = self.root / "Castings" if (self.root / "Castings").is_dir() else self.root
        entries = sorted(base.iterdir()) if base.is_dir() else []
        series_dirs = {int(m.group(1)): p for p in entries if p.is_dir() and (m := _SERIES_RE.match(p.name))}
        if not series_dirs:
            raise DatasetFormatError(
                f"gdxray: no series folders (C0001, C0002, ...) found in {base}; expected "
                "ROOT/Castings/Cssss/Cssss_nnnn.png"
            )
        val = as_series(val_series, "val_series")
        excluded = as_series(exclude_series, "exclude_series")
        found = f"found {series_ranges(series_dirs)}"
        if split == "val" and val and not val & set(series_dirs):  # the option is wrong, not the data
            raise DatasetDataOptionError(
                "val_series", f"series {series_ranges(val)} not found under {base}; {found}"
            )
        for option, wanted in (("val_series", val), ("exclude_series", excluded)):
            for s in sorted(wanted - set(series_dirs)):
                warnings.warn(
                    f"gdxray: {option} lists series {s} (C{s:04d}) but {base} has no such folder; "
                    "continuing without it",
                    stacklevel=3,
                )
        chosen = [s for s in series_dirs if s not in excluded and ((s in val) == (split == "val"))]
        self._boxes: list[np.ndarray] = []
        for s in chosen:
            self._index_series(s, series_dirs[s])
        self.series = chosen
        if not chosen and split == "train":
            raise DatasetDataOptionError(
                "exclude_series",
                f"no training series left under {base}: every series is in val_series or "
                f"exclude_series ({found})",
            )
        self.finish_index(option="val_series" if not chosen else None)

    def _index_series(self, s: int, folder: Path) -> None:
        prefix = folder.name
        images = {}
        for p in sorted(folder.glob(f"{prefix}_*.png")):
            tail = p.stem[len(prefix) + 1 :]
            if tail.isdigit():
                if int(tail) in images:  # C0001_0001.png and C0001_001.png: which one has the boxes?
                    raise DatasetFormatError(
                        f"gdxray: {images[int(tail)]} and {p} have the same image index {int(tail)}"
                    )
                images[int(tail)] = p
        gt_path = folder / "ground_truth.txt"
        per_image: dict[int, list[list[float]]] = {}
        if gt_path.is_file():
            for index, box, line_no in parse_ground_truth(gt_path):
                if index not in images:
                    raise DatasetFormatError(
                        f"{gt_path} line {line_no}: image_index {index} refers to "
                        f"{folder / f'{prefix}_{index:04d}.png'}, which does not exist"
                    )
                per_image.setdefault(index, []).append(box)
        for index, path in sorted(images.items()):
            boxes = per_image.get(index, [])
            if not boxes and not self.keep_image(0):
                continue
            size = self.header_size(path)
            if size is None:
                continue
            w, h = size
            arr = np.zeros((0, 4), dtype=np.float32)
            if boxes:
                clipped, outside, keep = clip_boxes(np.array(boxes), w, h)
                for k in np.flatnonzero(outside & keep):
                    self.note(
                        "boxes_clipped",
                        f"{gt_path.name} of {prefix}: box {boxes[k]} on {path.name} ({w}x{h})",
                    )
                for k in np.flatnonzero(~keep):
                    self.note(
                        "degenerate_boxes_dropped",
                        f"{gt_path.name} of {prefix}: box {boxes[k]} on {path.name}",
                    )
                arr = clipped[keep]
                if not len(arr) and not self.keep_image(0):  # every box degenerate: empty now
                    continue
            self._infos.append(ImageInfo(path, w, h, s * 10000 + index))
            self._boxes.append(arr)

    def image_classes(self, i: int) -> list[int]:
        return [1] if len(self._boxes[i]) else []

    def load_target(self, i: int, size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        boxes = self._boxes[i]
        return detection_target(boxes, np.ones(len(boxes), dtype=np.int64), self._infos[i].image_id)
