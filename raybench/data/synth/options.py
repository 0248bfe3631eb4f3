"""Checks of the synthesizers' numeric options, shared so every one reports the same way."""

from __future__ import annotations

import math
from typing import Any


def positive_at_most(name: str, value: Any, maximum: float, meaning: str) -> float:
    """``value`` as a float in (0, maximum], or a ValueError naming the option and the range.

    ``meaning`` says what 1 stands for (e.g. "1 = real planes' proportions"). Booleans and
    non-numbers are refused (YAML's ``yes`` must not become 1.0).
    """
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not 0 < number <= maximum:
        raise ValueError(
            f"synthesize: {name} must be a number in (0, {maximum:g}] ({meaning}), got {value!r}"
        )
    return number
