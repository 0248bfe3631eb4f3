"""Resample weights: ``W[b, i]`` = how many times image ``i`` is drawn in resample ``b``."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class _HasImages(Protocol):
    @property
    def num_images(self) -> int: ...


def as_weights(weights: Any, n: int) -> np.ndarray:
    """``weights`` as a ``[resamples, n]`` array (one resample may be given as ``[n]``); a
    ValueError naming the expected shape otherwise."""
    w = np.asarray(weights)
    if w.ndim == 1:
        w = w[None]
    if w.ndim != 2 or w.shape[1] != n:
        raise ValueError(f"weights must have shape [resamples, {n}] (one column per image), got {w.shape}")
    return w


def full_weights(records: _HasImages) -> np.ndarray:
    """``[1, N]`` ones: the evaluation itself (a check that records reproduce the metric)."""
    return np.ones((1, records.num_images), np.int64)


__all__ = ["as_weights", "full_weights"]
