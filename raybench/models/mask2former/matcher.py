"""Hungarian matching of predicted (class, mask) pairs to ground-truth segments.

Costs per (query, target) pair, on ``num_points`` uniformly random points shared by all pairs of an
image: ``class_cost * (-p(target class)) + mask_cost * sigmoid-CE + dice_cost * dice``. The official
Mask2Former uses the loss weights as costs (2 / 5 / 5); older transformers releases hard-code the
class cost to 1.0, hence the separate ``class_cost``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .point_sampling import point_sample


def pairwise_sigmoid_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean sigmoid cross-entropy of every prediction row against every target row.

    ``logits`` ``[Q, P]``, ``targets`` ``[N, P]`` in [0, 1] -> ``[Q, N]``. Uses
    ``BCE(x, 1) - BCE(x, 0) = -x``: the cost is ``(sum softplus(x) - x @ t) / P``, one matmul.
    """
    num_points = logits.shape[1]
    return (F.softplus(logits).sum(1, keepdim=True) - logits @ targets.t()) / num_points


def pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss (with +1 smoothing) of every prediction row against every target row, ``[Q, N]``."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.t()
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising the weighted cost (scipy)."""

    def __init__(
        self, class_cost: float = 2.0, mask_cost: float = 5.0, dice_cost: float = 5.0, num_points: int = 12544
    ):
        super().__init__()
        if class_cost == 0 and mask_cost == 0 and dice_cost == 0:
            raise ValueError("all matching costs are 0")
        self.class_cost = class_cost
        self.mask_cost = mask_cost
        self.dice_cost = dice_cost
        self.num_points = num_points

    @torch.no_grad()
    def forward(
        self,
        pred_logits: Tensor,
        pred_masks: Tensor,
        targets: Sequence[dict[str, Tensor]],
        generator: torch.Generator | None = None,
    ) -> list[tuple[Tensor, Tensor]]:
        """Match every image of the batch.

        Args:
            pred_logits: ``[B, Q, K+1]`` class logits.
            pred_masks: ``[B, Q, h, w]`` mask logits.
            targets: per image ``labels`` int64 ``[N]`` and ``masks`` ``[N, H, W]`` (any resolution).
            generator: source of the random points (global RNG when None: one ``torch.rand(1, P, 2)``
                per image, the reference's draws).

        Returns:
            per image ``(query_indices, target_indices)`` int64 tensors of length ``min(Q, N)``.
        """
        # Costs of every image first (on the device, no host sync), then one copy to the host for
        # scipy: one synchronisation per prediction instead of one per image.
        costs = []
        for b, target in enumerate(targets):
            probs = pred_logits[b].float().softmax(-1)
            labels = target["labels"]
            cost_class = -probs[:, labels]
            coords = torch.rand(1, self.num_points, 2, device=pred_masks.device, generator=generator)
            tgt = target["masks"].to(device=pred_masks.device, dtype=torch.float32)
            # All masks of the image as channels of one grid_sample call.
            tgt_points = point_sample(tgt[None], coords)[0]  # [N, P]
            pred_points = point_sample(pred_masks[b : b + 1].float(), coords)[0]  # [Q, P]
            cost = (
                self.mask_cost * pairwise_sigmoid_ce(pred_points, tgt_points)
                + self.class_cost * cost_class
                + self.dice_cost * pairwise_dice(pred_points, tgt_points)
            )
            # Non-finite costs (diverged predictions) become the largest float: matched last, no crash.
            big = torch.finfo(cost.dtype).max
            costs.append(torch.nan_to_num(cost, nan=big, posinf=big, neginf=big))
        flat = torch.cat([c.reshape(-1) for c in costs]).cpu().numpy() if costs else None
        indices, start = [], 0
        for cost in costs:
            n = cost.numel()
            rows, cols = linear_sum_assignment(flat[start : start + n].reshape(cost.shape))
            start += n
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices
