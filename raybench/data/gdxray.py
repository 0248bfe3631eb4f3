"""GDXray Castings: ``Castings/Cssss/Cssss_nnnn.png`` + per-series ``ground_truth.txt`` boxes.

Each ground-truth row is ``image_index x1 x2 y1 y2`` (1-based image index, numbers may be
floats such as MATLAB's ``1.0000000e+00``); min/max are normalised because some series
have the corners swapped. The split is by series (the paper's val series by default).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from raybench.data.base import ImageInfo, InspectionDataset, clip_boxes, detection_target
from raybench.data.errors import DatasetFormatError
from raybench.data.registry import register_dataset

DEFAULT_VAL_SERIES: tuple[int, ...] = (3, 32, 45, 54, 61, 87)
DEFAULT_EXCLUDE_SERIES: tuple[int, ...] = (55,)
_SERIES_RE = re.compile(r"^C(\d{4})$")


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
        index, x1, x2, y1, y2 = values
        if index != int(index) or index < 1:
            raise DatasetFormatError(
                f"{path} line {line_no}: image_index {tokens[0]!r} is not a positive integer"
            )
        rows.append((int(index), [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], line_no))
    return rows


def _as_series(values: Iterable[Any], option: str) -> set[int]:
    out = set()
    for v in values:
        text = str(v).strip().upper().lstrip("C")
        if not text.isdigit():
            raise ValueError(f"gdxray option {option}: {v!r} is not a series number (e.g. 3 or 'C0003')")
        out.add(int(text))
    return out


@register_dataset("gdxray")
class GDXrayDataset(InspectionDataset):
    """GDXray Castings detection, one class ("defect"); images without boxes are kept."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "val_series": DEFAULT_VAL_SERIES,
        "exclude_series": DEFAULT_EXCLUDE_SERIES,
        "keep_empty": True,
        "skip_unreadable": True,
    }
    task = "detection"
    num_classes = 1

    def __init__(
        self,
        root: Path,
        split: str,
        transforms: Any = None,
        *,
        val_series: Iterable[Any] = DEFAULT_VAL_SERIES,
        exclude_series: Iterable[Any] = DEFAULT_EXCLUDE_SERIES,
        keep_empty: bool = True,
        skip_unreadable: bool = True,
    ) -> None:
        super().__init__(root, split, transforms, skip_unreadable)
        self.class_names = ["defect"]
        base = self.root / "Castings" if (self.root / "Castings").is_dir() else self.root
        entries = sorted(base.iterdir()) if base.is_dir() else []
        series_dirs = {int(m.group(1)): p for p in entries if p.is_dir() and (m := _SERIES_RE.match(p.name))}
        if not series_dirs:
            raise DatasetFormatError(
                f"gdxray: no series folders (C0001, C0002, ...) found in {base}; expected "
                "ROOT/Castings/Cssss/Cssss_nnnn.png"
            )
        val = _as_series(val_series, "val_series")
        excluded = _as_series(exclude_series, "exclude_series")
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
            self._index_series(s, series_dirs[s], keep_empty)
        self.series = chosen
        self.finish_index()

    def _index_series(self, s: int, folder: Path, keep_empty: bool) -> None:
        prefix = folder.name
        images = {}
        for p in sorted(folder.glob(f"{prefix}_*.png")):
            tail = p.stem[len(prefix) + 1 :]
            if tail.isdigit():
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
            if not boxes and not keep_empty:
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
            self._infos.append(ImageInfo(path, w, h, s * 10000 + index))
            self._boxes.append(arr)

    def image_classes(self, i: int) -> list[int]:
        return [1] if len(self._boxes[i]) else []

    def load_target(self, i: int, size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        boxes = self._boxes[i]
        return detection_target(boxes, np.ones(len(boxes), dtype=np.int64), self._infos[i].image_id)
