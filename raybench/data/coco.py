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

from raybench.data.coco_json import (
    CocoJsonDataset,
    check_split_files,
    known_image,
    read_coco_file,
    require,
    require_list,
    under_root,
)
from raybench.data.errors import DatasetFormatError
from raybench.data.options import check_choice, check_random_split, check_texts
from raybench.data.registry import register_dataset
from raybench.data.splits import random_split


@register_dataset("coco")
class CocoDataset(CocoJsonDataset):
    """Generic COCO detection (``task="detection"``) or instance segmentation (``"instance"``).

    Images without (non-crowd) annotations: dropped from train, kept in val by default, as
    Detectron2 does (``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` filters the training set only;
    empty val images still count false positives). Option ``empty_images``.
    """

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
        "empty_images": {"train": "drop", "val": "keep"},
        "skip_unreadable": True,
    }

    @classmethod
    def validate_options(cls, options: Any) -> None:
        super().validate_options(options)
        if "task" in options:
            check_choice("task", options["task"], cls.TASKS)
        check_texts(options, ("train_annotations", "val_annotations", "train_images", "val_images", "images"))
        check_texts(options, ("annotations",), allow_none=True)
        check_random_split(options)

    def __init__(
        self,
        root: Path,
        split: str,
        transforms: Any,
        *,
        task: str,
        train_annotations: str,
        val_annotations: str,
        train_images: str,
        val_images: str,
        annotations: str | None,
        images: str,
        val_fraction: float,
        split_seed: int,
        empty_images: Mapping[str, str],
        skip_unreadable: bool,
    ) -> None:
        super().__init__(root, split, transforms, locals())
        self.task = task
        if annotations is not None:
            path, image_dir = under_root(self.root, annotations), under_root(self.root, images)
        else:
            paths = {
                "train": under_root(self.root, train_annotations),
                "val": under_root(self.root, val_annotations),
            }
            dirs = {"train": under_root(self.root, train_images), "val": under_root(self.root, val_images)}
            path, image_dir = paths[split], dirs[split]
        self.annotation_path = path
        data, coco_images = read_coco_file(path)
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
            img = known_image(coco_images, img_id, ann, where, path)
            if cid not in self.category_to_label:
                raise DatasetFormatError(
                    f"{path}: {where} (id {ann.get('id')!r}) has category_id {cid!r}, which is not "
                    f"in 'categories' (known: {', '.join(map(repr, ordered))})"
                )
            if not self.is_crowd(ann):
                self.add_object(img, ann, bbox, self.category_to_label[cid], where, path)
        chosen = sorted(coco_images.values(), key=lambda im: im.file_name)
        option = None
        if annotations is not None:  # split first, then the policy: val keeps the same images
            train, val = random_split([im.file_name for im in chosen], val_fraction, split_seed)
            keep = train if split == "train" else val
            option = "val_fraction" if chosen and not keep else None
            chosen = [im for im in chosen if im.file_name in keep]
        self._images = self.index_images(chosen, image_dir, path)
        self.finish_index(option=option)
