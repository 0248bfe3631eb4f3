"""Generic semantic segmentation folder: ``images/`` + ``masks/`` (same stems, PNG class ids).

Mask values: 0 = background, 1..K = classes, 255 = ignore. Class names come from the
``class_names`` option or ``classes.txt`` (one name per line for ids 1..K; a first line
``background`` is taken as id 0 and dropped). Split: ``splits/train.txt`` and
``splits/val.txt`` (one stem or file name per line) if present, else a random 80/20 split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from raybench.data.base import IGNORE_INDEX, InspectionDataset
from raybench.data.errors import DatasetFormatError
from raybench.data.images import (
    ImageInfo,
    check_lossless_mask,
    check_mask_shape,
    check_mask_size,
    images_by_stem,
    read_mask,
)
from raybench.data.options import check_names, check_random_split, check_texts
from raybench.data.registry import register_dataset
from raybench.data.splits import check_disjoint, random_split


def find_repeats(items: Sequence[Any]) -> dict[Any, list[int]]:
    """Items listed more than once -> the positions they occur at."""
    where: dict[Any, list[int]] = {}
    for i, item in enumerate(items):
        where.setdefault(item, []).append(i)
    return {k: v for k, v in where.items() if len(v) > 1}


def read_class_file(path: Path) -> list[str]:
    """``classes.txt`` -> foreground class names (ids 1..K)."""
    names = [ln.strip() for ln in path.read_text().splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if names and names[0].lower() == "background":
        names = names[1:]
    if not names:
        raise DatasetFormatError(f"{path}: no class names (expected one foreground class per line)")
    return names


def read_split_file(path: Path, stems: set[str]) -> list[str]:
    """Stems listed in a split file; an unknown name or a name listed twice is an error."""
    out: list[str] = []
    lines: list[int] = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        stem = Path(name).stem if Path(name).suffix else name
        if stem not in stems:
            raise DatasetFormatError(f"{path} line {line_no}: {name!r} is not an image in images/")
        out.append(stem)
        lines.append(line_no)
    for stem, where in find_repeats(out).items():
        at = " and ".join(str(lines[i]) for i in where)
        raise DatasetFormatError(f"{path} lines {at}: {stem!r} is listed more than once")
    return out


@register_dataset("mask_folder")
class MaskFolderDataset(InspectionDataset):
    """Semantic segmentation from an image folder and a mask folder of class-id PNGs."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "image_dir": "images",
        "mask_dir": "masks",
        "class_names": None,
        "classes_file": "classes.txt",
        "splits_dir": "splits",
        "val_fraction": 0.2,
        "split_seed": 42,
        "skip_unreadable": True,
    }
    task = "semantic"

    @classmethod
    def validate_options(cls, options: Any) -> None:
        super().validate_options(options)
        check_texts(options, ("image_dir", "mask_dir", "classes_file", "splits_dir"))
        if "class_names" in options:
            check_names("class_names", options["class_names"])
        check_random_split(options)

    def __init__(
        self,
        root: Path,
        split: str,
        transforms: Any,
        *,
        image_dir: str,
        mask_dir: str,
        class_names: list[str] | None,
        classes_file: str,
        splits_dir: str,
        val_fraction: float,
        split_seed: int,
        skip_unreadable: bool,
    ) -> None:
        super().__init__(root, split, transforms, locals())
        if class_names is not None:
            self.class_names = [str(n) for n in class_names]
        elif (self.root / classes_file).is_file():
            self.class_names = read_class_file(self.root / classes_file)
        else:
            raise DatasetFormatError(
                f"mask_folder: no class names for {self.root}; pass option class_names or write "
                f"{self.root / classes_file} (one foreground class name per line, ids 1..K)"
            )
        self.num_classes = len(self.class_names)
        if not (self.root / image_dir).is_dir():
            raise DatasetFormatError(f"mask_folder: image folder not found: {self.root / image_dir}")
        by_stem = images_by_stem(self.root / image_dir, "mask_folder")
        masks = images_by_stem(self.root / mask_dir, "mask_folder")
        for stem, mask in masks.items():
            if stem in by_stem:
                check_lossless_mask(mask, "mask_folder")
        split_files = [self.root / splits_dir / f"{s}.txt" for s in ("train", "val")]
        option = None
        if any(f.is_file() for f in split_files):
            missing = [str(f) for f in split_files if not f.is_file()]
            if missing:
                raise DatasetFormatError(
                    f"mask_folder: {missing[0]} is missing (both split files are needed)"
                )
            lists = [read_split_file(f, set(by_stem)) for f in split_files]
            check_disjoint(
                dict(zip(("train", "val"), lists, strict=True)), f"{split_files[0]} and {split_files[1]}"
            )
            chosen = lists[0 if split == "train" else 1]
        else:
            train, val = random_split(list(by_stem), val_fraction, split_seed)
            chosen = sorted(train if split == "train" else val)
            option = "val_fraction" if by_stem and not chosen else None
        self._masks: list[Path] = []
        self._classes: dict[int, list[int]] = {}
        for stem in chosen:
            mask = masks.get(stem)
            if mask is None:
                raise DatasetFormatError(
                    f"mask_folder: no mask for {by_stem[stem]}; "
                    f"expected {self.root / mask_dir / (stem + '.png')}"
                )
            size = self.header_size(by_stem[stem])
            if size is None:
                continue
            check_mask_size(mask, by_stem[stem], size)  # headers only: fails now, not mid-run
            self._infos.append(ImageInfo(by_stem[stem], *size, len(self._infos)))
            self._masks.append(mask)
        self.finish_index(option=option)

    def _read(self, i: int) -> np.ndarray:
        mask = read_mask(self._masks[i])
        bad = np.unique(mask[(mask > self.num_classes) & (mask != IGNORE_INDEX)])
        if bad.size:
            raise DatasetFormatError(
                f"{self._masks[i]}: mask values {bad.tolist()[:5]} are not class ids; expected 0 "
                f"(background), 1..{self.num_classes} or {IGNORE_INDEX} (ignore)"
            )
        return mask

    def image_classes(self, i: int) -> list[int]:
        if i not in self._classes:
            values = np.unique(self._read(i))
            self._classes[i] = [int(v) for v in values if 0 < v <= self.num_classes]
        return self._classes[i]

    def load_target(self, i: int, size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        mask = self._read(i)
        check_mask_shape(mask, self._masks[i], self._infos[i].path, size)
        return {"sem_seg": torch.from_numpy(mask).to(torch.int64)}
