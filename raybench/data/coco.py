"""Generic COCO JSON + image folder (detection or instance) so a plant can plug in its data.

Default layout (COCO-like, every path overridable by an option)::

    annotations/instances_train.json   images/train/...
    annotations/instances_val.json     images/val/...

With a single file (option ``annotations``) the images are split 80/20 at random
(``split_seed``). Category ids are mapped to contiguous 1..K in ascending id order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from raybench.data.base import ImageInfo, InspectionDataset, detection_target, random_split
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


def _path(root: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else root / p


@register_dataset("coco")
class CocoDataset(InspectionDataset):
    """Generic COCO detection (``task="detection"``) or instance segmentation (``"instance"``)."""

    #: The values of the ``task`` option (the study checks its ``task`` against them).
    TASKS: ClassVar[tuple[str, ...]] = ("detection", "instance")
    OPTIONS: ClassVar[dict[str, Any]] = {
        "task": "detection",
        "train_annotations": "annotations/instances_train.json",
        "val_annotations": "annotations/instances_val.json",
        "train_images": "images/train",
        "val_images": "images/val",
        "annotations": None,
        "images": "images",
        "val_fraction": 0.2,
        "split_seed": 42,
        "skip_unreadable": True,
    }

    def __init__(
        self,
        root: Path,
        split: str,
        transforms: Any = None,
        *,
        task: str = "detection",
        train_annotations: str = "annotations/instances_train.json",
        val_annotations: str = "annotations/instances_val.json",
        train_images: str = "images/train",
        val_images: str = "images/val",
        annotations: str | None = None,
        images: str = "images",
        val_fraction: float = 0.2,
        split_seed: int = 42,
        skip_unreadable: bool = True,
    ) -> None:
        super().__init__(root, split, transforms, skip_unreadable)
        if task not in self.TASKS:
            raise ValueError(f"coco option task must be one of {self.TASKS}, got {task!r}")
        self.task = task
        if annotations is not None:
            path, image_dir = _path(self.root, annotations), _path(self.root, images)
        elif split == "train":
            path, image_dir = _path(self.root, train_annotations), _path(self.root, train_images)
        else:
            path, image_dir = _path(self.root, val_annotations), _path(self.root, val_images)
        self.annotation_path = path
        data = load_json(path)
        coco_images = read_images(data, path)
        cats = require_list(data, "categories", path)
        cat_ids = []
        names: dict[Any, str] = {}
        for i, cat in enumerate(cats):
            cid = require(cat, "id", f"categories[{i}]", path)
            names[cid] = str(cat.get("name", cid))
            cat_ids.append(cid)
        if not cat_ids:
            raise DatasetFormatError(f"{path}: 'categories' is empty; expected at least one category")
        ordered = sorted(set(cat_ids), key=lambda c: (str(type(c)), c))
        self.category_to_label = {cid: k + 1 for k, cid in enumerate(ordered)}
        self.class_names = [names[c] for c in ordered]
        self.num_classes = len(ordered)
        for j, ann in enumerate(require_list(data, "annotations", path)):
            where = f"annotations[{j}]"
            img_id = require(ann, "image_id", where, path)
            cid = require(ann, "category_id", where, path)
            bbox = require(ann, "bbox", where, path)
            if img_id not in coco_images:
                raise DatasetFormatError(
                    f"{path}: {where} (id {ann.get('id')!r}) refers to image_id {img_id!r}, "
                    "which is not in 'images'"
                )
            if cid not in self.category_to_label:
                raise DatasetFormatError(
                    f"{path}: {where} (id {ann.get('id')!r}) has category_id {cid!r}, which is not "
                    f"in 'categories' (known: {', '.join(map(repr, ordered))})"
                )
            if ann.get("iscrowd", 0):
                self.stats["crowd_annotations_skipped"] += 1
                continue
            seg = None
            if task == "instance":
                seg = require(ann, "segmentation", where, path)
                validate_segmentation(seg, where, path)
            add_annotation(self, coco_images[img_id], bbox, self.category_to_label[cid], seg, where, path)
        chosen = sorted(coco_images.values(), key=lambda im: im.file_name)
        if annotations is not None:
            train, val = random_split([im.file_name for im in chosen], val_fraction, split_seed)
            keep = train if split == "train" else val
            chosen = [im for im in chosen if im.file_name in keep]
        self._images = []
        for img in chosen:
            file = image_dir / img.file_name
            if not file.is_file():
                self.note("missing_images", f"{file} (listed in {path.name})")
                continue
            self._images.append(img)
            self._infos.append(ImageInfo(file, img.width, img.height, img.image_id))
        self.finish_index()

    def image_classes(self, i: int) -> list[int]:
        return sorted(set(self._images[i].labels))

    def load_target(self, i: int, size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        img = self._images[i]
        masks = decode_masks(img, self.annotation_path) if self.task == "instance" else None
        return detection_target(np.array(img.boxes), np.array(img.labels), img.image_id, masks)
