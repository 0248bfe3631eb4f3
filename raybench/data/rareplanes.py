"""RarePlanes real imagery: 512x512 tiles + tiled COCO JSON with the per-object attribute quirk.

Layout of the public bucket (``s3://rareplanes-public``) once downloaded::

    real/train/PS-RGB_tiled/*.png
    real/test/PS-RGB_tiled/*.png
    real/metadata_annotations/RarePlanes_Train_Coco_Annotations_tiled.json
    real/metadata_annotations/RarePlanes_Test_Coco_Annotations_tiled.json

``root`` may be the folder holding ``real/`` or ``real/`` itself. In these JSON files
``categories`` is not a class list but one attribute record per object (role,
num_engines, propulsion, wing_type, ...) index-aligned with ``annotations``; the class is
one attribute (``class_attribute``) mapped to 1..K by ``class_map``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from raybench.data.base import ImageInfo, InspectionDataset, detection_target
from raybench.data.coco_json import (
    add_annotation,
    decode_masks,
    load_json,
    read_images,
    require,
    require_list,
    validate_segmentation,
)
from raybench.data.errors import DatasetFormatError
from raybench.data.registry import register_dataset

#: The paper's 3 classes: the civil "role" attribute (the roles of the real tiles).
DEFAULT_CLASS_ATTRIBUTE = "role"
DEFAULT_CLASS_MAP: dict[str, int] = {
    "Small Civil Transport/Utility": 1,
    "Medium Civil Transport/Utility": 2,
    "Large Civil Transport/Utility": 3,
}
DEFAULT_CLASS_NAMES: tuple[str, ...] = ("small_civil", "medium_civil", "large_civil")

ANNOTATION_FILES = {
    "train": "RarePlanes_Train_Coco_Annotations_tiled.json",
    "val": "RarePlanes_Test_Coco_Annotations_tiled.json",
}
OFFICIAL_SPLIT = {"train": "train", "val": "test"}


def _resolve(root: Path, value: str | None, candidates: list[str], what: str) -> Path:
    if value is not None:
        p = Path(value)
        return p if p.is_absolute() else root / p
    for c in candidates:
        if (root / c).exists():
            return root / c
    tried = ", ".join(str(root / c) for c in candidates)
    raise DatasetFormatError(f"rareplanes: {what} not found; looked for {tried}")


def class_table(class_map: dict[Any, int], class_names: list[str] | tuple[str, ...] | None) -> list[str]:
    """Validate ``class_map`` (ids 1..K, contiguous) and return the K class names."""
    ids = sorted(set(int(v) for v in class_map.values()))
    if not ids or ids != list(range(1, len(ids) + 1)):
        raise ValueError(
            f"rareplanes class_map ids must be contiguous 1..K, got {sorted(class_map.values())}"
        )
    if class_names is None:
        return [str(next(k for k, v in class_map.items() if int(v) == i)) for i in ids]
    if len(class_names) != len(ids):
        raise ValueError(f"rareplanes class_names has {len(class_names)} names for {len(ids)} class ids")
    return [str(n) for n in class_names]


def lookup_class(class_map: dict[Any, int], value: Any) -> int | None:
    """Class id of an attribute value (``2`` and ``"2"`` match each other)."""
    if value in class_map:
        return int(class_map[value])
    as_text = str(value)
    for k, v in class_map.items():
        if str(k) == as_text:
            return int(v)
    return None


@register_dataset("rareplanes")
class RarePlanesDataset(InspectionDataset):
    """RarePlanes instance segmentation; train = official train, val = official test."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "class_attribute": DEFAULT_CLASS_ATTRIBUTE,
        "class_map": DEFAULT_CLASS_MAP,
        "class_names": DEFAULT_CLASS_NAMES,
        "unmapped": "error",
        "attribute_source": "auto",
        "train_annotations": None,
        "val_annotations": None,
        "train_images": None,
        "val_images": None,
        "skip_unreadable": True,
    }
    task = "instance"

    def __init__(
        self,
        root: Path,
        split: str,
        transforms: Any = None,
        *,
        class_attribute: str = DEFAULT_CLASS_ATTRIBUTE,
        class_map: dict[Any, int] | None = None,
        class_names: list[str] | tuple[str, ...] | None = None,
        unmapped: str = "error",
        attribute_source: str = "auto",
        train_annotations: str | None = None,
        val_annotations: str | None = None,
        train_images: str | None = None,
        val_images: str | None = None,
        skip_unreadable: bool = True,
    ) -> None:
        super().__init__(root, split, transforms, skip_unreadable)
        if unmapped not in ("error", "skip"):
            raise ValueError(f"rareplanes option unmapped must be 'error' or 'skip', got {unmapped!r}")
        if attribute_source not in ("auto", "categories", "annotations"):
            raise ValueError(
                "rareplanes option attribute_source must be auto|categories|annotations, "
                f"got {attribute_source!r}"
            )
        if class_map is None:
            class_map = dict(DEFAULT_CLASS_MAP)
            class_names = DEFAULT_CLASS_NAMES if class_names is None else class_names
        elif class_names is DEFAULT_CLASS_NAMES and class_map != DEFAULT_CLASS_MAP:
            class_names = None  # a custom map without names: names come from the map
        self.class_names = class_table(class_map, class_names)
        self.num_classes = len(self.class_names)
        self.class_attribute = class_attribute
        official = OFFICIAL_SPLIT[split]
        ann_opt = train_annotations if split == "train" else val_annotations
        img_opt = train_images if split == "train" else val_images
        fname = ANNOTATION_FILES[split]
        self.annotation_path = _resolve(
            self.root,
            ann_opt,
            [f"real/metadata_annotations/{fname}", f"metadata_annotations/{fname}", f"real/{fname}", fname],
            f"annotation file {fname}",
        )
        image_dir = _resolve(
            self.root,
            img_opt,
            [f"real/{official}/PS-RGB_tiled", f"{official}/PS-RGB_tiled"],
            f"image folder for split {split!r} ({official}/PS-RGB_tiled)",
        )
        path = self.annotation_path
        data = load_json(path)
        images = read_images(data, path)
        annotations = require_list(data, "annotations", path)
        categories = data.get("categories", []) if isinstance(data, dict) else []
        aligned = isinstance(categories, list) and len(categories) == len(annotations)
        if attribute_source == "categories" and not aligned:
            raise DatasetFormatError(
                f"{path}: attribute_source='categories' needs one categories record per annotation, "
                f"got {len(categories)} categories for {len(annotations)} annotations"
            )
        for j, ann in enumerate(annotations):
            where = f"annotations[{j}]"
            img_id = require(ann, "image_id", where, path)
            bbox = require(ann, "bbox", where, path)
            if img_id not in images:
                raise DatasetFormatError(
                    f"{path}: {where} (id {ann.get('id')!r}) refers to image_id {img_id!r}, "
                    "which is not in 'images'"
                )
            if ann.get("iscrowd", 0):
                self.stats["crowd_annotations_skipped"] += 1
                continue
            value, source = self._attribute(ann, categories, j, aligned, attribute_source, path)
            label = lookup_class(class_map, value)
            if label is None:
                if unmapped == "skip":
                    self.stats["unmapped_annotations_skipped"] += 1
                    continue
                known = ", ".join(repr(k) for k in class_map)
                raise DatasetFormatError(
                    f"{path}: {where} (id {ann.get('id')!r}): {class_attribute} value {value!r} "
                    f"(from {source}) is not in class_map (known: {known}); add it to class_map "
                    "or set unmapped='skip'"
                )
            seg = require(ann, "segmentation", where, path)
            validate_segmentation(seg, where, path)
            add_annotation(self, images[img_id], bbox, label, seg, where, path)
        self._images = []
        for img in sorted(images.values(), key=lambda im: im.file_name):
            file = image_dir / img.file_name
            if not file.is_file():
                self.note("missing_images", f"{file} (listed in {path.name})")
                continue
            self._images.append(img)
            self._infos.append(ImageInfo(file, img.width, img.height, img.image_id))
        self.finish_index()

    def _attribute(
        self, ann: dict, categories: list, j: int, aligned: bool, source: str, path: Path
    ) -> tuple[Any, str]:
        attr = self.class_attribute
        if source in ("auto", "categories") and aligned and isinstance(categories[j], dict):
            if attr in categories[j]:
                return categories[j][attr], f"categories[{j}]"
            if source == "categories":
                raise DatasetFormatError(f"{path}: categories[{j}] has no attribute {attr!r}")
        if source in ("auto", "annotations") and attr in ann:
            return ann[attr], f"annotations[{j}]"
        raise DatasetFormatError(
            f"{path}: no {attr!r} attribute for annotations[{j}]: expected it in categories[{j}] "
            f"(one attribute record per annotation; file has {len(categories)} categories records) "
            "or in the annotation itself"
        )

    def image_classes(self, i: int) -> list[int]:
        return sorted(set(self._images[i].labels))

    def load_target(self, i: int, size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        img = self._images[i]
        masks = decode_masks(img, self.annotation_path)
        return detection_target(np.array(img.boxes), np.array(img.labels), img.image_id, masks)
