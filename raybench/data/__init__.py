"""Datasets of the study behind one factory, plus transforms, synthetic copies and checks.

``build_dataset(name, root, split, transforms=None, **options)`` returns a torch
``Dataset`` of ``(image uint8 [3,H,W], target dict)`` items (the item contract of
docs/datasets.md). A map of the package is in docs/datasets.md ("Where the code is").
"""

from raybench.data.base import IGNORE_INDEX, ImageInfo, InspectionDataset
from raybench.data.errors import (
    DatasetDataOptionError,
    DatasetFormatError,
    DatasetOptionError,
    DatasetRootError,
    DownloadError,
)
from raybench.data.registry import (
    build_dataset,
    dataset_class,
    dataset_options,
    list_datasets,
    register_dataset,
)
from raybench.data.transforms import build_transforms

__all__ = [
    "IGNORE_INDEX",
    "DatasetDataOptionError",
    "DatasetFormatError",
    "DatasetOptionError",
    "DatasetRootError",
    "DownloadError",
    "ImageInfo",
    "InspectionDataset",
    "build_dataset",
    "build_transforms",
    "dataset_class",
    "dataset_options",
    "list_datasets",
    "register_dataset",
]
