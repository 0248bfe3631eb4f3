"""Sine positional encoding of a 2-D feature map (DETR / Mask2Former ``PositionEmbeddingSine``)."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor


@lru_cache(maxsize=32)
def _sine_embedding(
    height: int,
    width: int,
    num_pos_feats: int,
    temperature: float,
    scale: float,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    y = torch.arange(1, height + 1, dtype=dtype, device=device)[:, None].expand(height, width)
    x = torch.arange(1, width + 1, dtype=dtype, device=device)[None, :].expand(height, width)
    eps = 1e-6
    y = y / (y[-1:, :] + eps) * scale
    x = x / (x[:, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.int64, device=device).to(dtype)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos_x = x[:, :, None] / dim_t
    pos_y = y[:, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, 0::2].sin(), pos_x[:, :, 1::2].cos()), dim=3).flatten(2)
    pos_y = torch.stack((pos_y[:, :, 0::2].sin(), pos_y[:, :, 1::2].cos()), dim=3).flatten(2)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).contiguous()


def sine_position_embedding(
    height: int,
    width: int,
    num_pos_feats: int,
    *,
    temperature: float = 10000.0,
    scale: float = 2 * math.pi,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Normalised sine embedding ``[2 * num_pos_feats, height, width]`` (y channels, then x).

    No padding mask: every position is valid, as in transformers' Mask2Former (which always passes
    an all-valid mask). The result depends only on the shape, so it is cached; treat it as read-only.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    return _sine_embedding(height, width, num_pos_feats, float(temperature), float(scale), device, dtype)
