"""Name -> dataset class registry: one factory (:func:`build_dataset`) for every format.

Each registered class declares ``OPTIONS`` (name -> default); unknown names and unknown
options fail early with a message that lists what is known, because a typo in a study
file should not silently fall back to a default.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

SPLITS: tuple[str, ...] = ("train", "val")

_REGISTRY: dict[str, type] = {}


def register_dataset(name: str) -> Callable[[type], type]:
    """Class decorator: make ``cls`` buildable as ``build_dataset(name, ...)``."""

    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"dataset {name!r} is already registered ({_REGISTRY[name].__name__})")
        if not isinstance(getattr(cls, "OPTIONS", None), dict):
            raise TypeError(f"{cls.__name__} needs an OPTIONS dict (option name -> default)")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _ensure_builtin() -> None:
    # Importing the format modules registers them; done lazily to keep imports cheap.
    from raybench.data import coco, gdxray, mask_folder, rareplanes, rubber_rings, severstal  # noqa: F401


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    _ensure_builtin()
    return sorted(_REGISTRY)


def dataset_class(name: str) -> type:
    """The class registered under ``name`` (error lists the known names)."""
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown dataset {name!r}; known datasets: {known}") from None


def dataset_options(name: str) -> dict[str, Any]:
    """The options ``name`` accepts, with their defaults."""
    return dict(dataset_class(name).OPTIONS)


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Defaults merged with ``options``; unknown keys raise ``ValueError`` naming them."""
    defaults = dataset_options(name)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown option(s) for dataset {name!r}: {', '.join(map(repr, unknown))}; "
            f"known options: {', '.join(sorted(defaults))}"
        )
    return {**defaults, **options}


def build_dataset(
    name: str,
    root: str | Path,
    split: str,
    transforms: Callable[..., Any] | None = None,
    **options: Any,
) -> Any:
    """Build dataset ``name`` read from ``root`` for ``split`` ("train" or "val").

    ``transforms(image, target) -> (image, target)`` is applied last in ``__getitem__``.
    """
    cls = dataset_class(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    merged = check_options(name, options)
    return cls(Path(root), split, transforms=transforms, **merged)
