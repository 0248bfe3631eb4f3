"""Name -> dataset class registry: one factory (:func:`build_dataset`) for every format.

Each registered class declares ``OPTIONS`` (name -> default), the one place its defaults are
written: its constructor takes the same names keyword-only and without defaults, which
:func:`register_dataset` checks. Unknown names and unknown options fail early with a message
that lists what is known, because a typo in a study file should not silently fall back to a
default.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raybench.data.options import SPLITS

_REGISTRY: dict[str, type] = {}
#: The constructor's parameters before its keyword-only options.
POSITIONAL: tuple[str, ...] = ("self", "root", "split", "transforms")


def check_constructor(cls: type) -> None:
    """``cls.__init__`` takes exactly ``cls.OPTIONS``, keyword-only and without defaults, after
    ``(root, split, transforms)``: a second default in the signature could disagree with
    ``OPTIONS`` (what ``dataset_options`` and the study checks read). ``TypeError`` otherwise."""
    if not isinstance(getattr(cls, "OPTIONS", None), dict):
        raise TypeError(f"{cls.__name__} needs an OPTIONS dict (option name -> default)")
    if "skip_unreadable" not in cls.OPTIONS:
        raise TypeError(
            f"{cls.__name__}.OPTIONS must declare skip_unreadable (how unreadable images are handled)"
        )
    params = list(inspect.signature(cls.__init__).parameters.values())
    positional = tuple(p.name for p in params if p.kind is not p.KEYWORD_ONLY)
    if positional != POSITIONAL:
        raise TypeError(
            f"{cls.__name__}.__init__ must take ({', '.join(POSITIONAL[1:])}) before its keyword-only "
            f"options, got ({', '.join(positional[1:])})"
        )
    keyword = {p.name: p for p in params if p.kind is p.KEYWORD_ONLY}
    missing = sorted(set(cls.OPTIONS) - set(keyword))
    extra = sorted(set(keyword) - set(cls.OPTIONS))
    if missing or extra:
        raise TypeError(
            f"{cls.__name__}.__init__ keyword-only parameters must be the OPTIONS: "
            f"missing {missing or 'none'}, not in OPTIONS {extra or 'none'}"
        )
    with_default = sorted(n for n, p in keyword.items() if p.default is not p.empty)
    if with_default:
        raise TypeError(
            f"{cls.__name__}.__init__ gives defaults to {', '.join(with_default)}; "
            "write defaults only in OPTIONS (build_dataset passes every option)"
        )


def register_dataset(name: str) -> Callable[[type], type]:
    """Class decorator: make ``cls`` buildable as ``build_dataset(name, ...)``."""

    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"dataset {name!r} is already registered ({_REGISTRY[name].__name__})")
        check_constructor(cls)
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
