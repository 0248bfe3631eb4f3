"""Generic COCO JSON + image folder (detection or instance) so a plant can plug in its data.

Default layout (COCO-like, every path overridable by an option)::

    annotations/instances_train.json   images/train/...
    annotations/instances_val.json     images/val/...

With a single file (option ``annotations``) the images are split 80/20 at random
(``split_seed``). Category ids are mapped to contiguous 1..K in ascending id order.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from raybench.data.base import (
    InspectionDataset,
    check_choice,
    check_fraction,
    check_int,
    check_text,
    detection_target,
    random_split,
)
from raybench.data.coco_json import (
    add_annotation,
    check_segmentation,
    check_split_files,
    decode_masks,
    index_images,
    load_json,
    read_images,
    require,
    require_list,
)
from raybench.data.errors import DatasetFormatError
from raybench.data.registry import register_dataset


def _path(root: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else root / p


@register_dataset("coco")
class CocoDataset(InspectionDataset):
    """Generic COCO detection (``task="detection"``) or instance segmentation (``"instance"``).

    Images without (non-crowd) annotations: dropped from train, kept in val by default, as
    Detectron2 does (``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` filters the training set only;
    empty val images still count false positives). Option ``empty_images``.
    """

    #: The values of the ``task`` option (the study checks its ``task`` against them).
    TASKS: ClassVar[tuple[str, ...]] = ("detection", "instance")
    EMPTY_IMAGES_DEFAULT: ClassVar[dict[str, str]] = {"train": "drop", "val": "keep"}
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
        "empty_images": {"train": "drop", "val": "keep"},
        "skip_unreadable": True,
    }

    @classmethod
    def validate_options(cls, options: Any) -> None:
        super().validate_options(options)
        if "task" in options:
            check_choice("task", options["task"], cls.TASKS)
        for key in ("train_annotations", "val_annotations", "train_images", "val_images", "images"):
            if key in options:
                check_text(key, options[key])
        if "annotations" in options:
            check_text("annotations", options["annotations"], allow_none=True)
        if "val_fraction" in options:
            check_fraction("val_fraction", options["val_fraction"])
        if "split_seed" in options:
            check_int("split_seed", options["split_seed"], 0)

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
        empty_images: Mapping[str, str] | None = None,
        skip_unreadable: bool = True,
    ) -> None:
        self._validate_own(locals())
        super().__init__(root, split, transforms, skip_unreadable)
        self.set_empty_policy(empty_images)
        self.task = task
        if annotations is not None:
            path, image_dir = _path(self.root, annotations), _path(self.root, images)
        else:
            paths = {"train": _path(self.root, train_annotations), "val": _path(self.root, val_annotations)}
            dirs = {"train": _path(self.root, train_images), "val": _path(self.root, val_images)}
            path, image_dir = paths[split], dirs[split]
        self.annotation_path = path
        data = load_json(path)
        coco_images = read_images(data, path)
        if annotations is None:
            check_split_files(split, paths, dirs, (im.file_name for im in coco_images.values()))
        cats = require_list(data, "categories", path)
        cat_ids = []
        names: dict[Any, str] = {}
        first: dict[Any, str] = {}
        for i, cat in enumerate(cats):
            where = f"categories[{i}]"
            cid = require(cat, "id", where, path)
            if cid in first:  # which name / which objects belong to the id is ambiguous
                raise DatasetFormatError(f"{path}: {where} repeats category id {cid!r} of {first[cid]}")
            first[cid] = where
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
                check_segmentation(self, seg, coco_images[img_id], where, path)
            add_annotation(self, coco_images[img_id], bbox, self.category_to_label[cid], seg, where, path)
        chosen = sorted(coco_images.values(), key=lambda im: im.file_name)
        option = None
        if annotations is not None:  # split first, then the policy: val keeps the same images
            train, val = random_split([im.file_name for im in chosen], val_fraction, split_seed)
            keep = train if split == "train" else val
            option = "val_fraction" if chosen and not keep else None
            chosen = [im for im in chosen if im.file_name in keep]
        self._images = index_images(self, chosen, image_dir, path)
        self.finish_index(option=option)

    def image_classes(self, i: int) -> list[int]:
        return sorted(set(self._images[i].labels))

    def load_target(self, i: int, size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        img = self._images[i]
        masks = decode_masks(img, self.annotation_path) if self.task == "instance" else None
        return detection_target(np.array(img.boxes), np.array(img.labels), img.image_id, masks)
