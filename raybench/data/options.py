"""Checks of dataset option *values*, done without touching the disk.

Each check raises :class:`DatasetOptionError` naming the option (its key under
``datasets[i].options`` in a study), so a study's up-front check and the loader's own
construction refuse the same values with the same message.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from raybench.data.errors import DatasetOptionError

#: The two splits every format builds.
SPLITS: tuple[str, ...] = ("train", "val")
#: Values of the per-split ``empty_images`` policy of the detection / instance formats.
EMPTY_POLICIES: tuple[str, ...] = ("drop", "keep")


def did_you_mean(value: Any, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
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
            option, f"expected one of {listed}, got {value!r}{did_you_mean(value, choices)}"
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


def check_texts(options: Mapping[str, Any], keys: Iterable[str], allow_none: bool = False) -> None:
    """:func:`check_text` for each of ``keys`` present in ``options`` (paths, file names)."""
    for key in keys:
        if key in options:
            check_text(key, options[key], allow_none=allow_none)


def check_random_split(options: Mapping[str, Any]) -> None:
    """``val_fraction`` in [0, 1) and ``split_seed`` >= 0, where given (formats that split at random)."""
    if "val_fraction" in options:
        check_fraction("val_fraction", options["val_fraction"])
    if "split_seed" in options:
        check_int("split_seed", options["split_seed"], 0)


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
        if split not in SPLITS:
            raise DatasetOptionError(
                f"{option}.{split}",
                f"unknown split {split!r}; expected train or val{did_you_mean(split, SPLITS)}",
            )
        out[split] = check_choice(f"{option}.{split}", policy, EMPTY_POLICIES)
    return out
