"""What every dataset format shares: the item contract, image decoding, splits, problem notes.

A dataset is indexed once at construction (file lists, annotations, split) and decodes
lazily in ``__getitem__``. Annotation problems a user would rather continue past (a box
outside the image, a file listed but missing) are *noted*: counted in ``stats``, kept as
examples in ``problems``, and reported in one warning per kind instead of one per item.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from raybench.data.errors import DatasetFormatError

IGNORE_INDEX = 255
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

try:  # torchvision's decoders are ~1.5x faster than PIL's but deprecated from 0.29 on.
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as _tv_decode
except ImportError:  # pragma: no cover - future torchvision without decoders
    _tv_decode = None


@dataclass(frozen=True)
class ImageInfo:
    """One image as listed by the dataset: where it is and how big (without decoding it)."""

    path: Path
    width: int
    height: int
    image_id: int

    @property
    def file_name(self) -> str:
        return self.path.name


def read_image(path: Path) -> torch.Tensor:
    """Decode ``path`` to a ``uint8 [3, H, W]`` tensor (grayscale repeated to 3 channels).

    Raises :class:`DatasetFormatError` naming the file when it is missing, truncated or
    not an image.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DatasetFormatError(f"cannot read image {path}: {exc}") from None
    if data.size == 0:
        raise DatasetFormatError(f"cannot decode image {path}: file is empty")
    if _tv_decode is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                out = _tv_decode(torch.from_numpy(data), mode=ImageReadMode.RGB)
            if out.dtype != torch.uint8:  # 16-bit PNG: full 16-bit range -> 8 bit
                out = (out.to(torch.float32) / 257.0).round().to(torch.uint8)
            return out
        except RuntimeError:
            pass  # BMP/TIFF/16-bit or corrupt: let PIL decide
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.float32)
                arr = np.round(arr / 257.0).clip(0, 255).astype(np.uint8)
                arr = np.repeat(arr[..., None], 3, axis=2)
            else:
                arr = np.array(im.convert("RGB"))
    except Exception as exc:  # PIL raises many types for corrupt data
        raise DatasetFormatError(f"cannot decode image {path}: {exc}") from None
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


def read_mask(path: Path) -> np.ndarray:
    """Decode a single-channel mask (palette indices kept) to ``uint8 [H, W]``."""
    try:
        with Image.open(path) as im:
            if im.mode in ("L", "P"):
                arr = np.array(im, dtype=np.uint8)
            elif im.mode == "1":  # bilevel: on = 255, like the grayscale it stands for
                arr = np.array(im, dtype=np.uint8) * np.uint8(255)
            elif im.mode in ("I;16", "I", "I;16B"):
                arr = np.asarray(im).astype(np.int64)
                if arr.max() > 255:
                    raise DatasetFormatError(f"mask {path}: values up to {arr.max()} do not fit 0..255")
                arr = arr.astype(np.uint8)
            else:  # RGB(A) masks: accept only if grey (all channels equal)
                rgb = np.asarray(im.convert("RGB"))
                if not (
                    np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
                ):
                    raise DatasetFormatError(
                        f"mask {path}: expected a single-channel (grayscale or palette) image, "
                        f"got colour mode {im.mode}"
                    )
                arr = rgb[..., 0].copy()
    except DatasetFormatError:
        raise
    except Exception as exc:
        raise DatasetFormatError(f"cannot decode mask {path}: {exc}") from None
    return np.ascontiguousarray(arr)


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file header only (cheap; no pixel decoding)."""
    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except Exception as exc:
        raise DatasetFormatError(f"cannot read image header of {path}: {exc}") from None


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def n_val_ceil(n: int, val_fraction: float) -> int:
    """Validation count ``ceil(n * f)`` (sklearn's rule): 6666 -> 1334 as in the paper."""
    return min(n, math.ceil(round(n * val_fraction, 9)))


def random_split(keys: Sequence[str], val_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Deterministic random split of ``keys`` (order-independent: keys are sorted first).

    ``val = first ceil(n * val_fraction)`` of ``numpy.random.default_rng(seed).permutation``.
    """
    ordered = sorted(set(keys))
    perm = np.random.default_rng(seed).permutation(len(ordered))
    n_val = n_val_ceil(len(ordered), val_fraction)
    val = {ordered[i] for i in perm[:n_val]}
    return set(ordered) - val, val


def stratified_split(
    groups: dict[Any, Sequence[str]], val_fraction: float, seed: int
) -> tuple[set[str], set[str]]:
    """Per-group random split whose *total* is ``round_half_up(n * f)`` (197 -> 39).

    The total is apportioned to groups by largest remainder (ties: group order), so each
    group gets ``floor`` or ``ceil`` of its share. Groups are visited in the given order and
    each draws one permutation from a single ``default_rng(seed)``.
    """
    names = list(groups)
    sizes = [len(set(groups[g])) for g in names]
    total = math.floor(round(sum(sizes) * val_fraction, 9) + 0.5)
    quotas = [s * val_fraction for s in sizes]
    counts = [math.floor(round(q, 9)) for q in quotas]
    rest = total - sum(counts)
    order = sorted(range(len(names)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order:
        if rest <= 0:
            break
        if counts[i] < sizes[i]:
            counts[i] += 1
            rest -= 1
    rng = np.random.default_rng(seed)
    train: set[str] = set()
    val: set[str] = set()
    for g, k in zip(names, counts, strict=True):
        ordered = sorted(set(groups[g]))
        perm = rng.permutation(len(ordered))
        chosen = {ordered[i] for i in perm[:k]}
        val |= chosen
        train |= set(ordered) - chosen
    return train, val


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip xyxy ``boxes`` to the image; returns (clipped, was_outside, keep (non-degenerate))."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    outside = np.any(np.abs(clipped - boxes) > 1e-6, axis=1)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped, outside, keep


class InspectionDataset(Dataset):
    """Base of all formats: ``(image, target)`` items per the §3 contract.

    Subclasses fill ``self._infos`` (and whatever they need) in ``__init__`` and implement
    :meth:`load_target` and :meth:`image_classes`.
    """

    name: ClassVar[str] = "?"
    OPTIONS: ClassVar[dict[str, Any]] = {}
    task: str = "semantic"
    num_classes: int = 0
    class_names: list[str]
    ignore_index: int = IGNORE_INDEX
    #: Test short edge of the paper's Table 1 (the val transform's default).
    test_short_edge: ClassVar[int] = 800
    #: How many example messages per problem kind are kept in ``problems``.
    MAX_EXAMPLES: ClassVar[int] = 5

    def __init__(
        self,
        root: Path,
        split: str,
        transforms: Callable[[torch.Tensor, dict], tuple[torch.Tensor, dict]] | None = None,
        skip_unreadable: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.skip_unreadable = bool(skip_unreadable)
        self.stats: Counter[str] = Counter()
        self.problems: dict[str, list[str]] = {}
        self._infos: list[ImageInfo] = []

    # --- indexing helpers -------------------------------------------------------------
    def note(self, kind: str, message: str, count: int = 1) -> None:
        """Record a non-fatal problem (counted; the first few messages kept)."""
        self.stats[kind] += count
        examples = self.problems.setdefault(kind, [])
        if len(examples) < self.MAX_EXAMPLES:
            examples.append(message)

    def finish_index(self) -> None:
        """Warn once per problem kind and refuse an empty split (called by subclasses)."""
        for kind, examples in self.problems.items():
            warnings.warn(
                f"{self.name} {self.split}: {self.stats[kind]} x {kind.replace('_', ' ')} "
                f"(e.g. {examples[0]}); run `raybench data check {self.name} ROOT` for a report",
                stacklevel=4,
            )
        if not self._infos:
            raise DatasetFormatError(
                f"{self.name}: split {self.split!r} under {self.root} is empty (0 images); "
                "check the root folder, the split options and the annotation files"
            )

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
            self._check_target_size(j, image, target)
            if self.transforms is not None:
                image, target = self.transforms(image, target)
            return image, target
        raise DatasetFormatError(f"{self.name} {self.split}: no readable image found")

    def _check_target_size(self, i: int, image: torch.Tensor, target: dict[str, torch.Tensor]) -> None:
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
    """Build a §3 detection/instance target from numpy arrays."""
    target: dict[str, Any] = {
        "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
        "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
        "image_id": int(image_id),
    }
    if masks is not None:
        target["masks"] = torch.as_tensor(np.asarray(masks, dtype=np.uint8))
    return target
