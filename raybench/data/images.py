"""Image and mask files: decoding, header sizes, folder listings and mask sanity checks.

Every failure is a :class:`DatasetFormatError` naming the file, so a broken image is found
by ``raybench data check`` (or skipped and counted) instead of crashing a worker.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from raybench.data.errors import DatasetFormatError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Lossy formats: refused for label masks (compression turns class ids at edges into others).
LOSSY_MASK_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg")

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


def image_size(path: Path, what: str = "image") -> tuple[int, int]:
    """``(width, height)`` from the file header only (cheap; no pixel decoding).

    ``what`` names the file's role in the error ("image", or "mask": a mask that cannot be
    read is always an error, as unlike an image it cannot be skipped without losing a label).
    """
    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except Exception as exc:
        raise DatasetFormatError(f"cannot read {what} header of {path}: {exc}") from None


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def images_by_stem(folder: Path, fmt: str) -> dict[str, Path]:
    """``{stem: path}`` of the images in ``folder``; two files with one stem (``a.png`` and
    ``a.jpg``) are an error, as which one pairs with the other folder's ``a`` cannot be told."""
    out: dict[str, Path] = {}
    for p in list_images(folder):
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


def check_mask_size(mask: Path, image: Path, size: tuple[int, int]) -> None:
    """Mask header size must equal the image's ``size`` = (W, H) (cheap: headers only, at indexing)."""
    mw, mh = image_size(mask, "mask")
    w, h = size
    if (mw, mh) != (w, h):
        raise DatasetFormatError(f"{mask}: mask is {mw}x{mh} but image {image.name} is {w}x{h}")


def check_mask_shape(mask: np.ndarray, mask_path: Path, image: Path, size: tuple[int, int] | None) -> None:
    """A decoded mask must be ``size`` = (H, W) of its decoded image (the header may lie)."""
    if size is not None and mask.shape != tuple(size):
        raise DatasetFormatError(
            f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but image "
            f"{image.name} is {size[1]}x{size[0]}"
        )
