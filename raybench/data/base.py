"""What every dataset format shares: the item contract, options, indexing and problem notes.

A dataset is indexed once at construction (file lists, annotations, split) and decodes
lazily in ``__getitem__``. Annotation problems a user would rather continue past (a box
outside the image, a file listed but missing) are *noted*: counted in ``stats``, kept as
examples in ``problems``, and reported in one warning per kind instead of one per item.

A format declares its options once, in ``OPTIONS`` (name -> default); its constructor takes
them keyword-only *without* defaults (``register_dataset`` checks this), so a default is
written in one place. The item contract is described in docs/datasets.md ("The item contract").
Image decoding lives in :mod:`raybench.data.images`, option checks in
:mod:`raybench.data.options`, split rules in :mod:`raybench.data.splits`.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from raybench.data.errors import (
    DatasetDataOptionError,
    DatasetFormatError,
    DatasetOptionError,
    DatasetRootError,
)
from raybench.data.images import ImageInfo, image_size, read_image
from raybench.data.options import check_bool, check_empty_images, did_you_mean

IGNORE_INDEX = 255


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip xyxy ``boxes`` to the image; returns (clipped, was_outside, keep (non-degenerate))."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    outside = np.any(np.abs(clipped - boxes) > 1e-6, axis=1)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped, outside, keep


def check_root(name: str, root: Path) -> None:
    """The root must be an existing, non-empty folder (one clear message instead of a
    format-specific "file not found" deep inside)."""
    if not root.exists():
        raise DatasetRootError(f"{name}: root {root} does not exist")
    if not root.is_dir():
        raise DatasetRootError(f"{name}: root {root} is a file, expected the dataset folder")
    if next(root.iterdir(), None) is None:
        raise DatasetRootError(f"{name}: root {root} is an empty folder")


class InspectionDataset(Dataset):
    """Base of all formats: ``(image, target)`` items per the item contract (docs/datasets.md).

    A subclass declares ``OPTIONS`` (every option it takes, with its default: the only place
    defaults are written), takes the same names keyword-only and without defaults in its
    constructor, and starts it with ``super().__init__(root, split, transforms, locals())``.
    It then fills ``self._infos`` (and whatever it needs) and implements :meth:`load_target`
    and :meth:`image_classes`.
    """

    name: ClassVar[str] = "?"
    OPTIONS: ClassVar[dict[str, Any]] = {}
    task: str = "semantic"
    num_classes: int = 0
    class_names: list[str]
    ignore_index: int = IGNORE_INDEX
    #: Test short edge of the paper's Table 1 (the val transform's default).
    test_short_edge: ClassVar[int] = 800
    #: Table 1's (train, val) image counts for the paper's datasets; None for generic formats.
    #: ``raybench data check`` prints the counts it finds next to these.
    PAPER_SPLIT_SIZES: ClassVar[tuple[int, int] | None] = None
    #: How many example messages per problem kind are kept in ``problems``.
    MAX_EXAMPLES: ClassVar[int] = 5

    def __init__(
        self,
        root: Path,
        split: str,
        transforms: Callable[[torch.Tensor, dict], tuple[torch.Tensor, dict]] | None,
        options: Mapping[str, Any],
    ) -> None:
        """``options``: the subclass constructor's arguments (its ``locals()``); the declared
        ``OPTIONS`` among them are validated and kept in ``self.options``."""
        self.options: dict[str, Any] = {key: options[key] for key in self.OPTIONS}
        type(self).validate_options(self.options)
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.skip_unreadable = bool(self.options["skip_unreadable"])
        self.stats: Counter[str] = Counter()
        self.problems: dict[str, list[str]] = {}
        self._infos: list[ImageInfo] = []
        self.empty_policy: str = "keep"
        check_root(self.name, self.root)
        if "empty_images" in self.OPTIONS:  # this split's policy; missing splits: the default
            policy = check_empty_images(
                "empty_images", self.options["empty_images"], self.OPTIONS["empty_images"]
            )
            self.empty_policy = policy[split]

    # --- option values ------------------------------------------------------------------
    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> None:
        """Check option *values* (types, ranges, enums) without touching the disk.

        Raises :class:`DatasetOptionError` naming the option. The constructor calls it too,
        so a study's up-front check and the trial's own construction agree. Subclasses extend
        it (``super().validate_options(options)`` first).
        """
        if not isinstance(options, Mapping):
            raise DatasetOptionError("options", f"expected a mapping of option: value, got {options!r}")
        for key in options:
            if key not in cls.OPTIONS:
                raise DatasetOptionError(
                    str(key),
                    f"unknown option for dataset {cls.name!r}{did_you_mean(key, cls.OPTIONS)}; "
                    f"known options: {', '.join(sorted(cls.OPTIONS))}",
                )
        if "skip_unreadable" in options:
            check_bool("skip_unreadable", options["skip_unreadable"])
        if "empty_images" in options and "empty_images" in cls.OPTIONS:
            check_empty_images("empty_images", options["empty_images"], cls.OPTIONS["empty_images"])

    # --- the empty-image policy ---------------------------------------------------------
    def keep_image(self, n_objects: int) -> bool:
        """Whether an image with ``n_objects`` kept annotations stays in this split (counted)."""
        if n_objects or self.empty_policy == "keep":
            if not n_objects:
                self.stats["empty_images_kept"] += 1
            return True
        self.stats["empty_images_dropped"] += 1
        return False

    # --- indexing helpers -------------------------------------------------------------
    def note(self, kind: str, message: str, count: int = 1) -> None:
        """Record a non-fatal problem (counted; the first few messages kept)."""
        self.stats[kind] += count
        examples = self.problems.setdefault(kind, [])
        if len(examples) < self.MAX_EXAMPLES:
            examples.append(message)

    def finish_index(self, option: str | None = None) -> None:
        """Warn once per problem kind and refuse an empty split (called by subclasses).

        ``option``: the option that decided this split's membership (e.g. ``val_fraction``),
        named by the error when the split comes out empty. When the empty-image policy
        dropped every image, the error names ``empty_images`` instead.
        """
        for kind, examples in self.problems.items():
            warnings.warn(
                f"{self.name} {self.split}: {self.stats[kind]} x {kind.replace('_', ' ')} "
                f"(e.g. {examples[0]}); run `raybench data check {self.name} ROOT` for a report",
                stacklevel=4,
            )
        if self._infos:
            return
        message = (
            f"{self.name}: split {self.split!r} under {self.root} is empty (0 images); "
            "check the root folder, the split options and the annotation files"
        )
        dropped = self.stats.get("empty_images_dropped", 0)
        if dropped:
            raise DatasetDataOptionError(
                "empty_images",
                f"{message}: all {dropped} image(s) of the split have no annotations and "
                f"empty_images.{self.split} is 'drop' (set it to 'keep' to use them)",
            )
        if option is not None:
            raise DatasetDataOptionError(option, message)
        raise DatasetFormatError(message)

    def header_size(self, path: Path) -> tuple[int, int] | None:
        """``(width, height)`` of ``path`` from its header; None (noted) if unreadable and
        ``skip_unreadable``, else :class:`DatasetFormatError`."""
        try:
            return image_size(path)
        except DatasetFormatError as exc:
            if not self.skip_unreadable:
                raise
            self.note("unreadable_images", str(exc))
            return None

    # --- cheap listing ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._infos)

    def image_info(self, i: int) -> ImageInfo:
        """File and size of item ``i`` without decoding pixels."""
        return self._infos[i]

    def image_classes(self, i: int) -> list[int]:
        """Foreground class ids (1..K) present in item ``i``, without decoding the image."""
        raise NotImplementedError

    def load_image(self, i: int) -> torch.Tensor:
        """Decoded image ``uint8 [3, H, W]``."""
        return read_image(self._infos[i].path)

    def load_target(self, i: int, size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Untransformed target of item ``i`` (``size`` = (H, W) if already known)."""
        raise NotImplementedError

    # --- the item -----------------------------------------------------------------------
    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if i < 0:
            i += len(self)
        tries = len(self) if self.skip_unreadable else 1
        for k in range(tries):
            j = (i + k) % len(self)
            try:
                image = self.load_image(j)
            except DatasetFormatError as exc:
                if not self.skip_unreadable:
                    raise
                warnings.warn(f"skipping unreadable image: {exc}", stacklevel=2)
                continue
            target = self.load_target(j, size=(int(image.shape[1]), int(image.shape[2])))
            self.check_target_size(j, image, target)
            if self.transforms is not None:
                image, target = self.transforms(image, target)
            return image, target
        raise DatasetFormatError(f"{self.name} {self.split}: no readable image found")

    def check_target_size(self, i: int, image: torch.Tensor, target: dict[str, torch.Tensor]) -> None:
        """The decoded image must have the listed size, and dense targets the image's size."""
        h, w = int(image.shape[1]), int(image.shape[2])
        info = self._infos[i]
        if (info.width, info.height) != (w, h):
            raise DatasetFormatError(
                f"{info.path}: decoded image is {w}x{h} but the dataset lists it as "
                f"{info.width}x{info.height} (annotation file or header disagree with pixels)"
            )
        for key in ("sem_seg", "masks"):
            t = target.get(key)
            if t is not None and tuple(t.shape[-2:]) != (h, w):
                raise DatasetFormatError(
                    f"{info.path}: {key} is {t.shape[-1]}x{t.shape[-2]} but the image is {w}x{h}"
                )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"images={len(self)}, task={self.task!r}, classes={self.num_classes})"
        )


def detection_target(
    boxes: np.ndarray, labels: np.ndarray, image_id: int, masks: np.ndarray | None = None
) -> dict[str, torch.Tensor]:
    """Build a detection/instance target (boxes, labels, image_id[, masks]) from numpy arrays."""
    target: dict[str, Any] = {
        "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
        "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
        "image_id": int(image_id),
    }
    if masks is not None:
        target["masks"] = torch.as_tensor(np.asarray(masks, dtype=np.uint8))
    return target
