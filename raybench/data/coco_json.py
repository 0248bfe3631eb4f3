"""Shared reading of COCO-style JSON (generic COCO and RarePlanes): validation + boxes + masks.

Every structural problem is a :class:`DatasetFormatError` naming the file and the JSON path
(``annotations[12]``) so a broken export is fixed at its source, not guessed around.
:class:`CocoJsonDataset` is the base of both formats: it serves items from the images kept.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from raybench.data.base import InspectionDataset, clip_boxes, detection_target
from raybench.data.errors import DatasetDataOptionError, DatasetFormatError
from raybench.data.images import ImageInfo
from raybench.data.splits import check_disjoint


def under_root(root: Path, value: str) -> Path:
    """An option's path: absolute as given, else relative to the dataset root."""
    p = Path(value)
    return p if p.is_absolute() else root / p


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
    where: str = ""


def read_images(data: Any, path: Path) -> dict[Any, CocoImage]:
    """``images`` -> {id: CocoImage}: ids and file names unique, sizes positive integers."""
    images: dict[Any, CocoImage] = {}
    by_name: dict[str, str] = {}
    for i, rec in enumerate(require_list(data, "images", path)):
        where = f"images[{i}]"
        img_id = require(rec, "id", where, path)
        file_name = require(rec, "file_name", where, path)
        width = require(rec, "width", where, path)
        height = require(rec, "height", where, path)
        if img_id in images:
            raise DatasetFormatError(f"{path}: {where} repeats image id {img_id!r}")
        if not isinstance(file_name, str) or not file_name:
            raise DatasetFormatError(
                f"{path}: {where}.file_name should be a non-empty string, got {file_name!r}"
            )
        if file_name in by_name:  # one file twice = its objects counted twice
            raise DatasetFormatError(
                f"{path}: {where} repeats file_name {file_name!r} of {by_name[file_name]}; "
                "one entry per image"
            )
        by_name[file_name] = where
        try:
            w, h = int(width), int(height)
        except (TypeError, ValueError):
            raise DatasetFormatError(
                f"{path}: {where} has non-integer width/height {width!r}x{height!r}"
            ) from None
        if w < 1 or h < 1:
            raise DatasetFormatError(f"{path}: {where} has width/height {w}x{h}; expected positive sizes")
        int_id = img_id if isinstance(img_id, int) else i
        images[img_id] = CocoImage(int_id, file_name, w, h, where=where)
    return images


def known_image(images: dict[Any, CocoImage], img_id: Any, ann: Any, where: str, path: Path) -> CocoImage:
    """The image an annotation is on; an ``image_id`` not in ``images`` is an error."""
    if img_id not in images:
        raise DatasetFormatError(
            f"{path}: {where} (id {ann.get('id')!r}) refers to image_id {img_id!r}, which is not in 'images'"
        )
    return images[img_id]


def read_coco_file(path: Path) -> tuple[Any, dict[Any, CocoImage]]:
    """``(parsed JSON, {image id: CocoImage})`` of an annotation file (its images checked)."""
    data = load_json(path)
    return data, read_images(data, path)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_segmentation(seg: Any, where: str, path: Path) -> None:
    """Polygons must be flat ``[x, y, ...]`` lists of finite numbers with >= 3 points; RLE
    dicts need size + counts."""
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
        for v in poly:
            if not _is_number(v) or not math.isfinite(v):
                raise DatasetFormatError(
                    f"{path}: {where}.segmentation[{k}] has a value that is not a finite number: {v!r}"
                )


def rle_string_counts(text: str) -> list[int]:
    """Run lengths of a COCO compressed RLE string (the LEB128-like code of pycocotools'
    ``frString``): parsed here so a broken string is caught while indexing, cheaply."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                raise ValueError("string ends inside a number")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {text[p]!r} is not in the RLE alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def check_segmentation(ds: InspectionDataset, seg: Any, img: CocoImage, where: str, path: Path) -> None:
    """What can be checked against the image without rasterising: an RLE's size is the
    image's and its runs cover exactly H*W pixels; polygon points outside the image are
    counted (they are clipped when rasterised)."""
    validate_segmentation(seg, where, path)
    h, w = img.height, img.width
    if isinstance(seg, dict):
        size = seg["size"]
        if not (isinstance(size, list) and len(size) == 2 and list(size) == [h, w]):
            raise DatasetFormatError(
                f"{path}: {where}.segmentation.size is {size!r} but image {img.file_name} is "
                f"{w}x{h} (expected [height, width] = [{h}, {w}])"
            )
        counts = seg["counts"]
        try:
            if isinstance(counts, list):
                if not all(_is_number(c) and c == int(c) and c >= 0 for c in counts):
                    raise ValueError("counts must be non-negative integers")
                runs = [int(c) for c in counts]
            elif isinstance(counts, (str, bytes)):
                runs = rle_string_counts(counts.decode("ascii") if isinstance(counts, bytes) else counts)
                if any(c < 0 for c in runs):
                    raise ValueError("a decoded run length is negative")
            else:
                raise ValueError(f"counts should be a list or a string, got {type(counts).__name__}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise DatasetFormatError(f"{path}: {where}.segmentation (RLE) is invalid: {exc}") from None
        if sum(runs) != h * w:
            raise DatasetFormatError(
                f"{path}: {where}.segmentation (RLE) covers {sum(runs)} pixels but image "
                f"{img.file_name} has {w}x{h} = {h * w}"
            )
        return
    xy = np.concatenate([np.asarray(poly, dtype=np.float64) for poly in seg]).reshape(-1, 2)
    if (xy[:, 0] < 0).any() or (xy[:, 0] > w).any() or (xy[:, 1] < 0).any() or (xy[:, 1] > h).any():
        ds.note(
            "polygons_outside_image_clipped",
            f"{path.name} {where} (image {img.file_name}, {w}x{h}): points outside the image",
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
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise DatasetFormatError(f"{path}: {where}.bbox has a non-finite value (nan/inf): {bbox!r}")
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


@functools.lru_cache(maxsize=8)
def _listed_files(path: str, mtime_ns: int, size: int) -> frozenset[str]:
    data = load_json(Path(path))
    return frozenset(str(im.get("file_name")) for im in data.get("images", []) if isinstance(im, dict))


def check_split_files(
    split: str,
    paths: dict[str, Path],
    image_dirs: dict[str, Path],
    mine: Iterable[str],
    options: tuple[str, str] = ("train_annotations", "val_annotations"),
) -> None:
    """Train and val read from two annotation files must not list the same image file.

    The same annotation file for both splits is refused outright; when both splits' images
    live in the same folder, the other file's ``file_name`` entries are compared (images in
    different folders are different files)."""
    other = "val" if split == "train" else "train"
    if paths[split].resolve() == paths[other].resolve():
        raise DatasetDataOptionError(
            options[1],
            f"{paths[split]} is both the train and the val annotation file: train and val would be "
            "the same images (for a random split of one file set option annotations)",
        )
    if image_dirs[split].resolve() != image_dirs[other].resolve() or not paths[other].is_file():
        return  # other split's own build reports a missing file
    st = paths[other].stat()
    try:
        theirs = _listed_files(str(paths[other].resolve()), st.st_mtime_ns, st.st_size)
    except DatasetFormatError:
        return  # reported when that split is built
    lists = {split: list(mine), other: theirs}
    check_disjoint(
        {"train": lists["train"], "val": lists["val"]},
        f"{paths['train']} and {paths['val']} (images in the same folder {image_dirs[split]})",
    )


class CocoJsonDataset(InspectionDataset):
    """Base of the formats read from a COCO-style JSON file (``coco``, ``rareplanes``).

    The subclass reads its file in ``__init__`` (:func:`read_coco_file`, :func:`known_image`,
    :meth:`is_crowd`, :meth:`add_object`) and sets ``annotation_path`` and, with
    :meth:`index_images`, ``_images``;
    classes and targets (masks for ``task == "instance"``) are served from those.
    """

    annotation_path: Path
    _images: list[CocoImage]

    def is_crowd(self, ann: dict) -> bool:
        """Crowd annotations are skipped (counted), as Detectron2 trains on non-crowd objects."""
        if ann.get("iscrowd", 0):
            self.stats["crowd_annotations_skipped"] += 1
            return True
        return False

    def add_object(self, img: CocoImage, ann: dict, bbox: Any, label: int, where: str, path: Path) -> None:
        """Keep one object of ``img``; instance formats need (and check) its segmentation."""
        seg = None
        if self.task == "instance":
            seg = require(ann, "segmentation", where, path)
            check_segmentation(self, seg, img, where, path)
        add_annotation(self, img, bbox, label, seg, where, path)

    def index_images(self, images: Iterable[CocoImage], image_dir: Path, path: Path) -> list[CocoImage]:
        """Fill the index: the split's empty-image policy, then the file on disk, then its
        header size against the JSON's (a mismatch would make every mask and box wrong)."""
        kept: list[CocoImage] = []
        for img in images:
            if not self.keep_image(len(img.boxes)):
                continue
            file = image_dir / img.file_name
            if not file.is_file():
                self.note("missing_images", f"{file} (listed in {path.name})")
                continue
            size = self.header_size(file)
            if size is None:
                continue
            if size != (img.width, img.height):
                raise DatasetFormatError(
                    f"{file}: image is {size[0]}x{size[1]} but {path.name} {img.where} lists it as "
                    f"{img.width}x{img.height} (boxes and masks would be misplaced)"
                )
            kept.append(img)
            self._infos.append(ImageInfo(file, img.width, img.height, img.image_id))
        return kept

    def image_classes(self, i: int) -> list[int]:
        return sorted(set(self._images[i].labels))

    def load_target(self, i: int, size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        img = self._images[i]
        masks = decode_masks(img, self.annotation_path) if self.task == "instance" else None
        return detection_target(np.array(img.boxes), np.array(img.labels), img.image_id, masks)
