"""Point sampling shared by the matcher and the criterion (PointRend's ``point_sample``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(inputs: Tensor, coords: Tensor) -> Tensor:
    """Bilinearly sample ``inputs`` ``[N, C, H, W]`` at ``coords`` ``[N, P, 2]`` (x, y) in [0, 1].

    Returns ``[N, C, P]``. ``align_corners=False`` and zero padding, as Mask2Former.
    """
    return F.grid_sample(
        inputs, 2.0 * coords.unsqueeze(2) - 1.0, mode="bilinear", align_corners=False
    ).squeeze(3)


def uncertain_point_coords(
    logits: Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
    draws: tuple[Tensor, Tensor | None] | None = None,
) -> Tensor:
    """PointRend / Mask2Former importance sampling of ``num_points`` coordinates per mask.

    Draws ``num_points * oversample_ratio`` uniform points, keeps the ``importance_sample_ratio``
    share whose logits are closest to 0 (most uncertain) and fills up with fresh uniform points.
    ``logits`` is ``[N, 1, H, W]``; returns ``[N, num_points, 2]``. The random draws are two
    ``torch.rand`` calls in the reference's order, so a shared seed gives the reference's points.
    ``draws`` passes those two tensors (``[N, num_points * oversample_ratio, 2]`` and
    ``[N, num_random, 2]`` or None) drawn beforehand, so that several predictions' masks can be
    processed in one call (every row is independent of the others).
    """
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    if draws is None:
        coords = torch.rand(n, num_sampled, 2, device=logits.device, generator=generator)
    else:
        coords = draws[0]
    uncertainty = -point_sample(logits, coords).abs()  # [N, 1, num_sampled]
    idx = torch.topk(uncertainty[:, 0, :], k=num_uncertain, dim=1)[1]
    coords = torch.gather(coords, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        if draws is None:
            extra = torch.rand(n, num_random, 2, device=logits.device, generator=generator)
        else:
            extra = draws[1]
        coords = torch.cat([coords, extra], dim=1)
    return coords
