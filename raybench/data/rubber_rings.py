"""Rubber Rings (Liu et al. 2025, liutongkun/GFDS): MVTec-style folders, 9 defect classes.

``{Large,Small,Side}/images/<defect>/<name>.<ext>`` with grayscale masks in
``{Large,Small,Side}/ground_truth/<defect>/<name>_mask.<ext>`` (MVTec convention) or
``.../<name>.<ext>`` (same stem); a pixel is defect where the mask value is > 30. Each image
shows one defect type, so the folder gives the class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from raybench.data.base import InspectionDataset
from raybench.data.errors import DatasetFormatError
from raybench.data.images import (
    IMAGE_SUFFIXES,
    ImageInfo,
    check_lossless_mask,
    check_mask_shape,
    check_mask_size,
    images_by_stem,
    read_mask,
)
from raybench.data.options import check_bool, check_int, check_random_split
from raybench.data.registry import register_dataset
from raybench.data.splits import stratified_split

CLASS_NAMES: tuple[str, ...] = (
    "Large_bubble",
    "Large_pit",
    "Large_pressure",
    "Large_wear",
    "Small_fins",
    "Small_pit",
    "Small_scratch",
    "Side_holes",
    "Side_boundary",
)
PARTS: tuple[str, ...] = ("Large", "Small", "Side")
GOOD_FOLDERS = frozenset({"good", "ok", "normal"})


def find_mask(gt_dir: Path, image: Path) -> Path | None:
    """The mask of ``image``: ``<stem>_mask.*`` (MVTec) first, then ``<stem>.*``.

    A JPEG mask is refused (the published ground truth is PNG; JPEG would move the > 30
    threshold's edge and add speckles), with an error naming it.
    """
    for stem in (f"{image.stem}_mask", image.stem):
        for suffix in dict.fromkeys((image.suffix, *IMAGE_SUFFIXES)):
            candidate = gt_dir / f"{stem}{suffix}"
            if candidate.is_file():
                check_lossless_mask(candidate, "rubber_rings")
                return candidate
    return None


@register_dataset("rubber_rings")
class RubberRingsDataset(InspectionDataset):
    """Rubber Rings semantic segmentation: 0 = background, 1..9 in :data:`CLASS_NAMES` order."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "val_fraction": 0.2,
        "split_seed": 42,
        "mask_threshold": 30,
        "include_good": False,
        "skip_unreadable": True,
    }
    task = "semantic"
    num_classes = len(CLASS_NAMES)
    PAPER_SPLIT_SIZES: ClassVar[tuple[int, int] | None] = (158, 39)

    @classmethod
    def validate_options(cls, options: Any) -> None:
        super().validate_options(options)
        check_random_split(options)
        if "mask_threshold" in options:
            check_int("mask_threshold", options["mask_threshold"], 0, 254)
        if "include_good" in options:
            check_bool("include_good", options["include_good"])

    def __init__(
        self,
        root: Path,
        split: str,
        transforms: Any,
        *,
        val_fraction: float,
        split_seed: int,
        mask_threshold: int,
        include_good: bool,
        skip_unreadable: bool,
    ) -> None:
        super().__init__(root, split, transforms, locals())
        self.class_names = list(CLASS_NAMES)
        self.mask_threshold = int(mask_threshold)
        present = [p for p in PARTS if (self.root / p / "images").is_dir()]
        if not present:
            raise DatasetFormatError(
                f"rubber_rings: none of {', '.join(f'{p}/images/' for p in PARTS)} found under "
                f"{self.root}; expected MVTec-style folders <part>/images/<defect>/ and "
                "<part>/ground_truth/<defect>/"
            )
        groups: dict[str, list[str]] = {name: [] for name in CLASS_NAMES}
        entries: dict[str, tuple[Path, Path | None, int]] = {}
        for part in present:
            for folder in sorted(p for p in (self.root / part / "images").iterdir() if p.is_dir()):
                cls_name = f"{part}_{folder.name}"
                if folder.name.lower() in GOOD_FOLDERS:
                    if not include_good:
                        continue
                    cls_id, group = 0, "good"
                elif cls_name in CLASS_NAMES:
                    cls_id, group = CLASS_NAMES.index(cls_name) + 1, cls_name
                else:
                    self.note("unknown_defect_folders", f"{folder} (known: {', '.join(CLASS_NAMES)})")
                    continue
                gt_dir = self.root / part / "ground_truth" / folder.name
                for image in images_by_stem(folder, "rubber_rings").values():
                    mask = None
                    if cls_id:
                        mask = find_mask(gt_dir, image)
                        if mask is None:
                            raise DatasetFormatError(
                                f"rubber_rings: no mask for {image}; expected "
                                f"{gt_dir / (image.stem + '_mask.png')} or "
                                f"{gt_dir / (image.stem + image.suffix)}"
                            )
                    key = str(image.relative_to(self.root))
                    groups.setdefault(group, []).append(key)
                    entries[key] = (image, mask, cls_id)
        train, val = stratified_split(groups, val_fraction, split_seed)
        self._masks: list[Path | None] = []
        self._classes: list[int] = []
        chosen = sorted(train if split == "train" else val)
        for key in chosen:
            image, mask, cls_id = entries[key]
            size = self.header_size(image)
            if size is None:
                continue
            if mask is not None:
                check_mask_size(mask, image, size)  # headers only: a wrong mask fails now, not mid-run
            self._infos.append(ImageInfo(image, *size, len(self._infos)))
            self._masks.append(mask)
            self._classes.append(cls_id)
        self.finish_index(option="val_fraction" if entries and not chosen else None)

    def image_classes(self, i: int) -> list[int]:
        return [self._classes[i]] if self._classes[i] else []

    def load_target(self, i: int, size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        info = self._infos[i]
        mask_path = self._masks[i]
        if mask_path is None:
            h, w = size if size is not None else (info.height, info.width)
            return {"sem_seg": torch.zeros((h, w), dtype=torch.int64)}
        mask = read_mask(mask_path)
        check_mask_shape(mask, mask_path, info.path, size)
        sem = np.where(mask > self.mask_threshold, np.uint8(self._classes[i]), np.uint8(0))
        return {"sem_seg": torch.from_numpy(sem).to(torch.int64)}
