"""Gradient clipping as Detectron2 defines its ``CLIP_TYPE`` s.

- ``full_model``: one L2 norm over all gradients together (Mask2Former's recipe);
- ``norm``: each parameter's gradient clipped to L2 norm ``value`` on its own;
- ``value``: every gradient element clamped to ``[-value, value]``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from raybench.study.spec import ClipSpec


def clip_gradients(params: Iterable[torch.nn.Parameter], spec: ClipSpec | None) -> torch.Tensor | None:
    """Clip in place; returns the total norm before clipping for ``full_model`` (else None)."""
    if spec is None:
        return None
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return None
    if spec.type == "full_model":
        return torch.nn.utils.clip_grad_norm_(grads, spec.value)
    if spec.type == "norm":
        for p in grads:
            torch.nn.utils.clip_grad_norm_([p], spec.value)
        return None
    if spec.type == "value":
        torch.nn.utils.clip_grad_value_(grads, spec.value)
        return None
    raise ValueError(f"unknown clip type {spec.type!r}; expected full_model, norm or value")
