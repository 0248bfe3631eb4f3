"""Shared reading of COCO-style JSON (generic COCO and RarePlanes): validation + boxes + masks.

Every structural problem is a :class:`DatasetFormatError` naming the file and the JSON path
(``annotations[12]``) so a broken export is fixed at its source, not guessed around.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from raybench.data.base import InspectionDataset, clip_boxes
from raybench.data.errors import DatasetFormatError


def load_json(path: Path) -> Any:
    """Parse ``path``; a missing file or bad JSON names the file (and line/column)."""
    if not path.is_file():
        raise DatasetFormatError(f"annotation file not found: {path}")
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None


def require(record: Any, key: str, where: str, path: Path) -> Any:
    """``record[key]`` or a clear error naming file, JSON path and key."""
    if not isinstance(record, dict):
        raise DatasetFormatError(f"{path}: {where} should be an object, got {type(record).__name__}")
    if key not in record:
        raise DatasetFormatError(f"{path}: {where} is missing key {key!r}")
    return record[key]


def require_list(data: Any, key: str, path: Path) -> list:
    value = require(data, key, "top level", path)
    if not isinstance(value, list):
        raise DatasetFormatError(f"{path}: {key!r} should be a list, got {type(value).__name__}")
    return value


@dataclass
class CocoImage:
    """One image of a COCO file with its kept annotations (already clipped/filtered)."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    segmentations: list[Any] = field(default_factory=list)
    ann_refs: list[str] = field(default_factory=list)


def read_images(data: Any, path: Path) -> dict[Any, CocoImage]:
    """``images`` -> {id: CocoImage} (ids and file names validated)."""
    images: dict[Any, CocoImage] = {}
    for i, rec in enumerate(require_list(data, "images", path)):
        where = f"images[{i}]"
        img_id = require(rec, "id", where, path)
        file_name = require(rec, "file_name", where, path)
        width = require(rec, "width", where, path)
        height = require(rec, "height", where, path)
        if img_id in images:
            raise DatasetFormatError(f"{path}: {where} repeats image id {img_id!r}")
        try:
            w, h = int(width), int(height)
        except (TypeError, ValueError):
            raise DatasetFormatError(
                f"{path}: {where} has non-integer width/height {width!r}x{height!r}"
            ) from None
        int_id = img_id if isinstance(img_id, int) else i
        images[img_id] = CocoImage(int_id, str(file_name), w, h)
    return images


def validate_segmentation(seg: Any, where: str, path: Path) -> None:
    """Polygons must be flat ``[x, y, ...]`` lists with >= 3 points; RLE dicts need size+counts."""
    if isinstance(seg, dict):
        for key in ("size", "counts"):
            require(seg, key, f"{where}.segmentation", path)
        return
    if not isinstance(seg, list) or not seg:
        raise DatasetFormatError(
            f"{path}: {where}.segmentation should be a non-empty list of polygons or an RLE object"
        )
    for k, poly in enumerate(seg):
        if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
            n = len(poly) if isinstance(poly, list) else type(poly).__name__
            raise DatasetFormatError(
                f"{path}: {where}.segmentation[{k}] should be a flat [x1, y1, x2, y2, ...] list "
                f"with at least 3 points, got {n} values"
            )


def add_annotation(
    ds: InspectionDataset,
    img: CocoImage,
    bbox: Any,
    label: int,
    seg: Any,
    where: str,
    path: Path,
) -> None:
    """Convert ``[x, y, w, h]`` to xyxy, clip to the image (noted) and drop degenerate boxes (noted)."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise DatasetFormatError(f"{path}: {where}.bbox should be [x, y, w, h], got {bbox!r}") from None
    clipped, outside, keep = clip_boxes(np.array([[x, y, x + w, y + h]]), img.width, img.height)
    ref = f"{path.name} {where} (image {img.file_name})"
    if not keep[0]:
        ds.note("degenerate_boxes_dropped", f"{ref}: bbox {bbox!r}")
        return
    if outside[0]:
        ds.note("boxes_clipped", f"{ref}: bbox {bbox!r} outside {img.width}x{img.height}")
    img.boxes.append([float(v) for v in clipped[0]])
    img.labels.append(int(label))
    img.segmentations.append(seg)
    img.ann_refs.append(where)


def decode_masks(img: CocoImage, path: Path) -> np.ndarray:
    """Instance masks ``uint8 [N, H, W]`` from polygons / RLE (pycocotools)."""
    h, w = img.height, img.width
    out = np.zeros((len(img.segmentations), h, w), dtype=np.uint8)
    for k, seg in enumerate(img.segmentations):
        if seg is None:
            continue
        try:
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg.get("counts"), list):
                rle = mask_utils.frPyObjects(seg, h, w)
            else:
                rle = dict(seg)
                if isinstance(rle["counts"], str):
                    rle["counts"] = rle["counts"].encode("ascii")
            with warnings.catch_warnings():  # pycocotools + numpy 2: harmless copy= warning
                warnings.simplefilter("ignore", DeprecationWarning)
                out[k] = mask_utils.decode(rle)
        except Exception as exc:
            raise DatasetFormatError(
                f"{path}: {img.ann_refs[k]}.segmentation cannot be decoded: {exc}"
            ) from None
    return out
