"""What every dataset format shares: the item contract, image decoding, splits, problem notes.

A dataset is indexed once at construction (file lists, annotations, split) and decodes
lazily in ``__getitem__``. Annotation problems a user would rather continue past (a box
outside the image, a file listed but missing) are *noted*: counted in ``stats``, kept as
examples in ``problems``, and reported in one warning per kind instead of one per item.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from raybench.data.errors import (
    DatasetDataOptionError,
    DatasetFormatError,
    DatasetOptionError,
    DatasetRootError,
)

IGNORE_INDEX = 255
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Lossy formats: refused for label masks (compression turns class ids at edges into others).
LOSSY_MASK_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg")
#: Values of the per-split ``empty_images`` policy of the detection / instance formats.
EMPTY_POLICIES: tuple[str, ...] = ("drop", "keep")
SPLIT_NAMES: tuple[str, ...] = ("train", "val")

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


# --- option values (checked without touching the disk) -------------------------------
def _did_you_mean(value: Any, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_bool(option: str, value: Any) -> bool:
    """``value`` must be a real bool (``"yes"`` or ``1`` is refused: YAML/JSON give bools)."""
    if not isinstance(value, bool):
        raise DatasetOptionError(option, f"expected true or false, got {value!r}")
    return value


def check_int(option: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (not a bool, not a float) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DatasetOptionError(option, f"expected an integer, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        lo = "-inf" if minimum is None else minimum
        hi = "inf" if maximum is None else maximum
        raise DatasetOptionError(option, f"expected an integer in [{lo}, {hi}], got {value}")
    return value


def check_fraction(option: str, value: Any) -> float:
    """A validation fraction in ``[0, 1)``: 1 or more would leave no training image."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DatasetOptionError(option, f"expected a number in [0, 1) (e.g. 0.2), got {value!r}")
    if not (math.isfinite(value) and 0 <= value < 1):
        raise DatasetOptionError(
            option, f"expected a number in [0, 1) (the share of images that go to val), got {value!r}"
        )
    return float(value)


def check_choice(option: str, value: Any, choices: Sequence[str]) -> str:
    """One of ``choices`` (with a "did you mean" for typos such as ``ignor``)."""
    if not isinstance(value, str) or value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise DatasetOptionError(
            option, f"expected one of {listed}, got {value!r}{_did_you_mean(value, choices)}"
        )
    return value


def check_text(option: str, value: Any, allow_none: bool = False) -> str | None:
    """A non-empty string (a path or a name); ``None`` only where the option allows it."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value.strip():
        what = "a non-empty string or null" if allow_none else "a non-empty string"
        raise DatasetOptionError(option, f"expected {what}, got {value!r}")
    return value


def check_names(option: str, value: Any, allow_none: bool = True) -> list[str] | None:
    """A list of distinct, non-empty class names (names become metric keys: no duplicates)."""
    if value is None and allow_none:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
        raise DatasetOptionError(option, f"expected a non-empty list of class names, got {value!r}")
    names = []
    for i, v in enumerate(value):
        if not isinstance(v, (str, int)) or isinstance(v, bool) or not str(v).strip():
            raise DatasetOptionError(f"{option}[{i}]", f"expected a class name, got {v!r}")
        names.append(str(v))
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DatasetOptionError(option, f"class names must be distinct; repeated: {', '.join(repeated)}")
    return names


def check_empty_images(option: str, value: Any, defaults: Mapping[str, str]) -> dict[str, str]:
    """The per-split empty-image policy: ``{train: drop|keep, val: drop|keep}``.

    Missing splits take ``defaults``; anything else (a bare string, an unknown split or
    policy) is refused, so a typo cannot silently change which images are trained on.
    """
    if not isinstance(value, Mapping):
        raise DatasetOptionError(
            option, f"expected a mapping {{train: drop|keep, val: drop|keep}}, got {value!r}"
        )
    out = dict(defaults)
    for split, policy in value.items():
        if split not in SPLIT_NAMES:
            raise DatasetOptionError(
                f"{option}.{split}",
                f"unknown split {split!r}; expected train or val{_did_you_mean(split, SPLIT_NAMES)}",
            )
        out[split] = check_choice(f"{option}.{split}", policy, EMPTY_POLICIES)
    return out


# --- checks shared by the formats ------------------------------------------------------
def check_root(name: str, root: Path) -> None:
    """The root must be an existing, non-empty folder (one clear message instead of a
    format-specific "file not found" deep inside)."""
    if not root.exists():
        raise DatasetRootError(f"{name}: root {root} does not exist")
    if not root.is_dir():
        raise DatasetRootError(f"{name}: root {root} is a file, expected the dataset folder")
    if next(root.iterdir(), None) is None:
        raise DatasetRootError(f"{name}: root {root} is an empty folder")


def check_disjoint(
    splits: Mapping[str, Iterable[Any]], source: str, option: str | None = None, max_listed: int = 5
) -> None:
    """Train and val must not share items (a leak inflates every val metric).

    ``source`` names the file(s)/option(s) the split came from; the error lists the number of
    shared items and a few of them. With ``option`` it is a :class:`DatasetDataOptionError`.
    """
    (a, items_a), (b, items_b) = list(splits.items())
    shared = sorted(set(items_a) & set(items_b), key=str)
    if not shared:
        return
    listed = ", ".join(str(x) for x in shared[:max_listed]) + (", ..." if len(shared) > max_listed else "")
    message = f"{source}: {len(shared)} item(s) are in both {a} and {b} (train and val overlap): {listed}"
    if option is not None:
        raise DatasetDataOptionError(option, message)
    raise DatasetFormatError(message)


def find_repeats(items: Sequence[Any]) -> dict[Any, list[int]]:
    """Items listed more than once -> the positions they occur at."""
    where: dict[Any, list[int]] = {}
    for i, item in enumerate(items):
        where.setdefault(item, []).append(i)
    return {k: v for k, v in where.items() if len(v) > 1}


def by_unique_stem(paths: Iterable[Path], fmt: str) -> dict[str, Path]:
    """``{stem: path}``; two files with one stem (``a.png`` and ``a.jpg``) are an error, as
    which one pairs with the other folder's ``a`` cannot be told."""
    out: dict[str, Path] = {}
    for p in paths:
        if p.stem in out:
            raise DatasetFormatError(
                f"{fmt}: {out[p.stem]} and {p} share the stem {p.stem!r}; keep one file per stem"
            )
        out[p.stem] = p
    return out


def check_lossless_mask(path: Path, fmt: str) -> None:
    """Label masks must be lossless: JPEG turns the class ids along every edge into other ids."""
    if path.suffix.lower() in LOSSY_MASK_SUFFIXES:
        raise DatasetFormatError(
            f"{fmt}: mask {path} is {path.suffix} (lossy JPEG): compression changes label values "
            "along defect edges; save masks losslessly as PNG"
        )


def check_mask_size(mask: Path, image: Path, image_size: tuple[int, int]) -> None:
    """Mask header size must equal the image's (cheap: headers only, at indexing)."""
    mw, mh = image_size_of_mask(mask)
    w, h = image_size
    if (mw, mh) != (w, h):
        raise DatasetFormatError(f"{mask}: mask is {mw}x{mh} but image {image.name} is {w}x{h}")


def image_size_of_mask(path: Path) -> tuple[int, int]:
    """``(width, height)`` of a mask from its header (a mask that cannot be read is an error:
    unlike an image it cannot be skipped, the label would be lost silently)."""
    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except Exception as exc:
        raise DatasetFormatError(f"cannot read mask header of {path}: {exc}") from None


def series_ranges(values: Iterable[int], prefix: str = "C") -> str:
    """``[1, 2, 3, 5]`` -> ``"C0001..C0003, C0005"`` (compact lists in messages)."""
    ordered = sorted(set(values))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        a, b = f"{prefix}{ordered[i]:04d}", f"{prefix}{ordered[j]:04d}"
        parts.append(a if i == j else f"{a}..{b}")
        i = j + 1
    return ", ".join(parts) if parts else "none"


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
    #: Table 1's (train, val) image counts for the paper's datasets; None for generic formats.
    #: ``raybench data check`` prints the counts it finds next to these.
    PAPER_SPLIT_SIZES: ClassVar[tuple[int, int] | None] = None
    #: Default of the ``empty_images`` policy (formats that have the option).
    EMPTY_IMAGES_DEFAULT: ClassVar[dict[str, str]] = {"train": "drop", "val": "drop"}
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
        self.empty_policy: str = "keep"
        check_root(self.name, self.root)

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
                    f"unknown option for dataset {cls.name!r}{_did_you_mean(key, cls.OPTIONS)}; "
                    f"known options: {', '.join(sorted(cls.OPTIONS))}",
                )
        if "skip_unreadable" in options:
            check_bool("skip_unreadable", options["skip_unreadable"])
        if "empty_images" in options and "empty_images" in cls.OPTIONS:
            check_empty_images("empty_images", options["empty_images"], cls.EMPTY_IMAGES_DEFAULT)

    def _validate_own(self, given: Mapping[str, Any]) -> None:
        """Constructor hook: validate the options this instance was built with."""
        type(self).validate_options({k: v for k, v in given.items() if k in self.OPTIONS})

    # --- the empty-image policy ---------------------------------------------------------
    def set_empty_policy(self, empty_images: Mapping[str, str] | None) -> None:
        """Resolve this split's policy from the option (missing splits: the class default)."""
        policy = check_empty_images("empty_images", empty_images or {}, self.EMPTY_IMAGES_DEFAULT)
        self.empty_policy = policy[self.split]

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
