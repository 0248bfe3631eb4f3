"""Severstal steel defects (Kaggle): ``train_images/*.jpg`` + ``train.csv`` RLE masks.

Both CSV variants are read: current ``ImageId,ClassId,EncodedPixels`` (defect rows only)
and old ``ImageId_ClassId,EncodedPixels`` (4 rows per image, empty when no defect).
RLE runs are 1-indexed ``start length`` pairs over the image flattened column-major.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from raybench.data.base import IGNORE_INDEX, InspectionDataset
from raybench.data.errors import DatasetFormatError
from raybench.data.images import ImageInfo, list_images
from raybench.data.options import check_bool, check_choice, check_random_split, check_texts
from raybench.data.registry import register_dataset
from raybench.data.splits import random_split

NUM_CLASSES = 4
SEVERSTAL_SHAPE: tuple[int, int] = (256, 1600)  # (height, width) of the real images
CURRENT_COLUMNS = ("ImageId", "ClassId", "EncodedPixels")
OLD_COLUMNS = ("ImageId_ClassId", "EncodedPixels")


def parse_rle(rle: str) -> tuple[np.ndarray, np.ndarray]:
    """``"1 3 10 2"`` -> (starts, lengths) as int64 arrays; validates tokens, not bounds.

    Raises ``DatasetFormatError`` for non-integers, an odd token count, starts < 1,
    lengths < 1 and runs that overlap each other.
    """
    tokens = rle.split()
    try:
        values = np.array(tokens, dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise DatasetFormatError(f"RLE token {bad!r} is not an integer") from None
    if values.size % 2:
        raise DatasetFormatError(
            f"RLE has an odd number of tokens ({values.size}); expected 'start length' pairs"
        )
    starts, lengths = values[0::2], values[1::2]
    if starts.size and starts.min() < 1:
        raise DatasetFormatError(f"RLE start {int(starts.min())} < 1 (starts are 1-indexed)")
    if lengths.size and lengths.min() < 1:
        raise DatasetFormatError(f"RLE run length {int(lengths.min())} < 1")
    back = np.nonzero(starts[1:] < starts[:-1])[0]
    if back.size:  # the format lists runs in pixel order; out of order hints at a broken export
        k = int(back[0])
        raise DatasetFormatError(
            f"RLE runs are not in ascending order: run at {int(starts[k + 1])} follows run at "
            f"{int(starts[k])} (runs must be listed in pixel order)"
        )
    if starts.size > 1:
        order = np.argsort(starts, kind="stable")
        s, e = starts[order], starts[order] + lengths[order]
        clash = np.nonzero(s[1:] < e[:-1])[0]
        if clash.size:
            k = int(clash[0])
            raise DatasetFormatError(
                f"RLE runs overlap: run at {int(s[k])} (length {int(e[k] - s[k])}) and run at {int(s[k + 1])}"
            )
    return starts, lengths


def check_runs_fit(starts: np.ndarray, lengths: np.ndarray, n_pixels: int) -> None:
    """Every run must end within the image (``n_pixels`` = H*W); cheap, no decoding."""
    if starts.size == 0:
        return
    ends = starts - 1 + lengths
    if int(ends.max()) > n_pixels:
        k = int(np.argmax(ends))
        raise DatasetFormatError(
            f"RLE run starting at pixel {int(starts[k])} with length {int(lengths[k])} ends at "
            f"{int(ends[k])}, past the image end ({n_pixels} pixels)"
        )


def runs_to_index(starts: np.ndarray, lengths: np.ndarray, n_pixels: int) -> np.ndarray:
    """Flat 0-based pixel indices covered by the runs (vectorised; errors past the end)."""
    if starts.size == 0:
        return np.zeros(0, dtype=np.int64)
    check_runs_fit(starts, lengths, n_pixels)
    total = int(lengths.sum())
    offsets = np.repeat(starts - 1 - (np.cumsum(lengths) - lengths), lengths)
    return offsets + np.arange(total, dtype=np.int64)


def rle_decode(rle: str, shape: tuple[int, int] = SEVERSTAL_SHAPE) -> np.ndarray:
    """Decode a Severstal RLE string to a ``uint8 [H, W]`` 0/1 mask (column-major runs)."""
    h, w = shape
    flat = np.zeros(h * w, dtype=np.uint8)
    starts, lengths = parse_rle(rle)
    flat[runs_to_index(starts, lengths, h * w)] = 1
    return flat.reshape((h, w), order="F")


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (non-zero = on) as a Severstal RLE string (inverse of :func:`rle_decode`)."""
    flat = np.asarray(mask).reshape(-1, order="F") != 0
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2] + 1, edges[1::2] + 1
    return " ".join(f"{s} {e - s}" for s, e in zip(starts, ends, strict=True))


def read_severstal_csv(
    path: Path, duplicates: list[str] | None = None
) -> tuple[str, dict[str, list[tuple[int, str, int]]]]:
    """Parse ``train.csv`` (either variant) -> (variant, {image: [(class_id, rle, line)]}).

    Every listed image appears as a key (with an empty list when it has no defect), so the
    old variant's defect-free images are kept. Two rows for the same image and class: with
    the same RLE they are merged and described in ``duplicates`` (the caller warns with the
    count); with different RLE it is an error naming both lines (which mask is right cannot
    be guessed).
    """
    if not path.is_file():
        raise DatasetFormatError(f"annotation file not found: {path}")
    rows: dict[str, list[tuple[int, str, int]]] = {}
    seen: dict[tuple[str, int], tuple[str, int]] = {}
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if all(c in header for c in CURRENT_COLUMNS):
            variant = "current"
            i_img, i_cls, i_rle = (header.index(c) for c in CURRENT_COLUMNS)
        elif all(c in header for c in OLD_COLUMNS):
            variant = "old"
            i_img, i_rle = (header.index(c) for c in OLD_COLUMNS)
            i_cls = -1
        else:
            missing_cur = [c for c in CURRENT_COLUMNS if c not in header]
            raise DatasetFormatError(
                f"{path}: missing column(s) {', '.join(missing_cur)}; expected header "
                f"'{','.join(CURRENT_COLUMNS)}' (current) or '{','.join(OLD_COLUMNS)}' (old), "
                f"got '{','.join(header)}'"
            )
        width = max(i_img, i_cls, i_rle) + 1
        for line, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < width:
                raise DatasetFormatError(
                    f"{path} line {line}: expected {len(header)} fields, got {len(row)}: {row!r}"
                )
            if variant == "current":
                image, cls_text = row[i_img].strip(), row[i_cls].strip()
            else:
                key = row[i_img].strip()
                image, sep, cls_text = key.rpartition("_")
                if not sep:
                    raise DatasetFormatError(
                        f"{path} line {line}: ImageId_ClassId {key!r} is not '<image>_<class>'"
                    )
            try:
                cls = int(cls_text)
            except ValueError:
                cls = -1
            if not 1 <= cls <= NUM_CLASSES:
                raise DatasetFormatError(
                    f"{path} line {line}: ClassId {cls_text!r} for image {image!r} is not in 1..{NUM_CLASSES}"
                )
            entries = rows.setdefault(image, [])
            rle = " ".join(row[i_rle].split())
            first = seen.get((image, cls))
            if first is not None:
                if first[0] != rle:
                    raise DatasetFormatError(
                        f"{path} lines {first[1]} and {line}: image {image!r} class {cls} is listed twice "
                        "with different EncodedPixels; expected one row per image and class"
                    )
                if duplicates is not None:
                    duplicates.append(f"{path.name} lines {first[1]} and {line}: image {image} class {cls}")
                continue
            seen[(image, cls)] = (rle, line)
            if rle:
                entries.append((cls, rle, line))
    return variant, rows


@register_dataset("severstal")
class SeverstalDataset(InspectionDataset):
    """Severstal semantic segmentation: ``sem_seg`` 0 = background, 1..4 = ClassId.

    Pixels claimed by two classes get the higher ClassId (``overlap="last"``) or 255
    (``overlap="ignore"``).
    """

    OPTIONS: ClassVar[dict[str, Any]] = {
        "csv_file": "train.csv",
        "image_dir": "train_images",
        "only_defective": True,
        "val_fraction": 0.2,
        "split_seed": 42,
        "overlap": "last",
        "skip_unreadable": True,
    }
    task = "semantic"
    num_classes = NUM_CLASSES
    test_short_edge: ClassVar[int] = 384
    PAPER_SPLIT_SIZES: ClassVar[tuple[int, int] | None] = (5332, 1334)
    OVERLAP_RULES: ClassVar[tuple[str, ...]] = ("last", "ignore")

    @classmethod
    def validate_options(cls, options: Any) -> None:
        super().validate_options(options)
        check_texts(options, ("csv_file", "image_dir"))
        if "only_defective" in options:
            check_bool("only_defective", options["only_defective"])
        check_random_split(options)
        if "overlap" in options:
            check_choice("overlap", options["overlap"], cls.OVERLAP_RULES)

    def __init__(
        self,
        root: Path,
        split: str,
        transforms: Any,
        *,
        csv_file: str,
        image_dir: str,
        only_defective: bool,
        val_fraction: float,
        split_seed: int,
        overlap: str,
        skip_unreadable: bool,
    ) -> None:
        super().__init__(root, split, transforms, locals())
        self.class_names = [f"defect_{c}" for c in range(1, NUM_CLASSES + 1)]
        self.overlap = overlap
        self.csv_path = self.root / csv_file
        image_root = self.root / image_dir
        if not image_root.is_dir():
            raise DatasetFormatError(f"severstal: image folder not found: {image_root}")
        duplicates: list[str] = []
        self.csv_variant, rows = read_severstal_csv(self.csv_path, duplicates)
        for text in duplicates:
            self.note("duplicate_rows_merged", f"{text} (identical EncodedPixels)")
        on_disk = {p.name: p for p in list_images(image_root)}
        if only_defective:
            candidates = [img for img, runs in rows.items() if runs]
        else:
            candidates = sorted(set(rows) | set(on_disk))
        train, val = random_split(candidates, val_fraction, split_seed)
        chosen = sorted(train if split == "train" else val)
        # Parse and validate every RLE now: errors name file, line and image up front.
        self._runs: list[list[tuple[int, np.ndarray, np.ndarray, int]]] = []
        for image in chosen:
            path = on_disk.get(image)
            if path is None:
                self.note("missing_images", f"{image_root / image} (listed in {self.csv_path.name})")
                continue
            runs = []
            for cls, rle, line in rows.get(image, []):
                try:
                    starts, lengths = parse_rle(rle)
                except DatasetFormatError as exc:
                    raise DatasetFormatError(
                        f"{self.csv_path} line {line} (image {image}, class {cls}): {exc}"
                    ) from None
                runs.append((cls, starts, lengths, line))
            runs.sort(key=lambda r: r[0])
            size = self.header_size(path)
            if size is None:
                continue
            w, h = size
            for cls, starts, lengths, line in runs:  # every run inside the image, now, not at load
                try:
                    check_runs_fit(starts, lengths, w * h)
                except DatasetFormatError as exc:
                    raise DatasetFormatError(
                        f"{self.csv_path} line {line} (image {image}, class {cls}, image {w}x{h}): {exc}"
                    ) from None
            self._infos.append(ImageInfo(path, *size, len(self._infos)))
            self._runs.append(runs)
        self.finish_index(option="val_fraction" if candidates and not chosen else None)

    def image_classes(self, i: int) -> list[int]:
        return sorted({cls for cls, *_ in self._runs[i]})

    def load_target(self, i: int, size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        info = self._infos[i]
        h, w = size if size is not None else (info.height, info.width)
        flat = np.zeros(h * w, dtype=np.uint8)
        seen = np.zeros(h * w, dtype=bool) if self.overlap == "ignore" else None
        clashes = []
        for cls, starts, lengths, line in self._runs[i]:
            try:
                idx = runs_to_index(starts, lengths, h * w)
            except DatasetFormatError as exc:
                raise DatasetFormatError(
                    f"{self.csv_path} line {line} (image {info.file_name}, class {cls}, image {w}x{h}): {exc}"
                ) from None
            if seen is not None:
                clashes.append(idx[seen[idx]])
                seen[idx] = True
            flat[idx] = cls
        for clash in clashes:
            flat[clash] = IGNORE_INDEX
        sem = np.ascontiguousarray(flat.reshape((w, h)).T)
        return {"sem_seg": torch.from_numpy(sem).to(torch.int64)}
