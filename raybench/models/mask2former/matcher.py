"""Hungarian matching of predicted (class, mask) pairs to ground-truth segments.

Costs per (query, target) pair, on ``num_points`` uniformly random points shared by all pairs of an
image: ``class_cost * (-p(target class)) + mask_cost * sigmoid-CE + dice_cost * dice``. The official
Mask2Former uses the loss weights as costs (2 / 5 / 5); older transformers releases hard-code the
class cost to 1.0, hence the separate ``class_cost``.

:meth:`HungarianMatcher.match` matches every prediction of a step (the final one and the auxiliary
ones) and every image at once: the cost matrices are computed on the device batched over images
(one ``grid_sample`` and one ``bmm`` per prediction; the targets are sampled for all predictions in
one call), then copied to the host in **one** device-to-host copy per step for scipy's
``linear_sum_assignment`` (one small assignment per prediction and image, microseconds each), and
the resulting indices go back to the device in one non-blocking copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .point_sampling import point_sample


def pairwise_sigmoid_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean sigmoid cross-entropy of every prediction row against every target row.

    ``logits`` ``[..., Q, P]``, ``targets`` ``[..., N, P]`` in [0, 1] -> ``[..., Q, N]``. Uses
    ``BCE(x, 1) - BCE(x, 0) = -x``: the cost is ``(sum softplus(x) - x @ t) / P``, one matmul.
    """
    num_points = logits.shape[-1]
    return (F.softplus(logits).sum(-1, keepdim=True) - logits @ targets.transpose(-1, -2)) / num_points


def pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss (with +1 smoothing) of every prediction row against every target row, ``[..., Q, N]``."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.transpose(-1, -2)
    denominator = probs.sum(-1)[..., :, None] + targets.sum(-1)[..., None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class Matching(NamedTuple):
    """Assignments of every (prediction, image) pair of a step.

    ``host[l][b]`` is ``(query_indices, target_indices)`` (numpy int64, queries ascending) for
    prediction ``l`` and image ``b``. The device tensors list every matched pair in the order
    prediction -> image -> query (the order the reference concatenates them in): ``pred``,
    ``image``, ``query``, ``target`` (int64 ``[M]``), and ``slot``, the row of the pair among its
    image's matched pairs of all predictions (``l * matched_b + rank``), used to batch per image.
    """

    host: list[list[tuple[np.ndarray, np.ndarray]]]
    pred: Tensor
    image: Tensor
    query: Tensor
    target: Tensor
    slot: Tensor


def pad_targets(tensors: Sequence[Tensor], value: float = 0) -> Tensor:
    """Stack per-image ``[N_b, ...]`` tensors to ``[B, N_max, ...]``, zero-padded along ``N`` and
    (for masks of different sizes) at the bottom / right, like both references pad."""
    if len({tuple(t.shape[1:]) for t in tensors}) == 1:
        return torch.nn.utils.rnn.pad_sequence(list(tensors), batch_first=True, padding_value=value)
    n_max = max(int(t.shape[0]) for t in tensors)
    size = [max(int(t.shape[d]) for t in tensors) for d in range(1, tensors[0].dim())]
    out = tensors[0].new_full((len(tensors), n_max, *size), value)
    for b, t in enumerate(tensors):
        out[(b, slice(0, t.shape[0]), *(slice(0, s) for s in t.shape[1:]))] = t
    return out


def sample_targets(masks: Sequence[Tensor], coords: Tensor, padded: Tensor | None = None) -> Tensor:
    """Every image's target masks at its points of every prediction, unpadded (as transformers).

    ``masks``: per image float ``[N_b, H_b, W_b]``; ``coords`` ``[L, B, P, 2]`` -> ``[L, B, N_max, P]``
    (rows past ``N_b`` are zero); ``padded``: :func:`pad_targets` of ``masks`` if already made.
    One ``grid_sample`` call when the images share a size (fixed crops); per image otherwise
    (points are relative to each image's own size, as in transformers' matcher).
    """
    num_preds, batch, num_points, _ = coords.shape
    n_max = max((int(m.shape[0]) for m in masks), default=0)
    grid = coords.permute(1, 0, 2, 3).reshape(batch, num_preds * num_points, 2)
    if len({tuple(m.shape[-2:]) for m in masks}) == 1:
        stacked = padded if padded is not None else pad_targets(masks).float()
        points = point_sample(stacked, grid)  # [B, N_max, L * P]
    else:
        points = coords.new_zeros(batch, n_max, num_preds * num_points)
        for b, m in enumerate(masks):
            if m.shape[0]:
                points[b, : m.shape[0]] = point_sample(m[None].float(), grid[b : b + 1])[0]
    return points.view(batch, n_max, num_preds, num_points).permute(2, 0, 1, 3)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising the weighted cost (scipy).

    Keyword-only, without defaults: the head passes ``Mask2FormerOptions``' ``class_cost``,
    ``mask_weight``, ``dice_weight`` and ``num_points`` (the official matcher's costs are the
    loss weights).
    """

    def __init__(self, *, class_cost: float, mask_cost: float, dice_cost: float, num_points: int):
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
        """Match every image of the batch (one prediction).

        Args:
            pred_logits: ``[B, Q, K+1]`` class logits.
            pred_masks: ``[B, Q, h, w]`` mask logits.
            targets: per image ``labels`` int64 ``[N]`` and ``masks`` ``[N, H, W]`` (any resolution).
            generator: source of the random points (global RNG when None: one ``torch.rand(1, P, 2)``
                per image, the reference's draws).

        Returns:
            per image ``(query_indices, target_indices)`` int64 tensors of length ``min(Q, N)``.
        """
        device = pred_masks.device
        coords = torch.cat(
            [torch.rand(1, self.num_points, 2, device=device, generator=generator) for _ in targets]
        )
        masks = [t["masks"].to(device=device, dtype=torch.float32) for t in targets]
        labels = [t["labels"].to(device) for t in targets]
        counts = [len(x) for x in labels]
        padded_labels = pad_targets(labels) if max(counts, default=0) else None
        target_points = sample_targets(masks, coords[None])
        matching = self.match([(pred_logits, pred_masks)], padded_labels, counts, target_points, coords[None])
        return [
            (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            for rows, cols in matching.host[0]
        ]

    def costs(
        self, pred_logits: Tensor, pred_masks: Tensor, labels: Tensor, target_points: Tensor, coords: Tensor
    ) -> Tensor:
        """Cost matrices ``[B, Q, N_max]`` of one prediction, all images at once, on the device.

        ``labels`` ``[B, N_max]`` (any valid class id in padded slots), ``target_points``
        ``[B, N_max, P]``, ``coords`` ``[B, P, 2]``. Padded columns hold finite garbage.
        """
        probs = pred_logits.float().softmax(-1)
        cost_class = -probs.gather(2, labels[:, None, :].expand(-1, probs.shape[1], -1))
        pred_points = point_sample(pred_masks.float(), coords)  # [B, Q, P]: queries as channels
        cost = (
            self.mask_cost * pairwise_sigmoid_ce(pred_points, target_points)
            + self.class_cost * cost_class
            + self.dice_cost * pairwise_dice(pred_points, target_points)
        )
        # Non-finite costs (diverged predictions) become the largest float: matched last, no crash.
        big = torch.finfo(cost.dtype).max
        return torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)

    @torch.no_grad()
    def match(
        self,
        predictions: Sequence[tuple[Tensor, Tensor]],
        labels: Tensor | None,
        counts: Sequence[int],
        target_points: Tensor,
        coords: Tensor,
    ) -> Matching:
        """Match every prediction and image with one device-to-host copy.

        Args:
            predictions: per prediction ``(pred_logits [B, Q, K+1], pred_masks [B, Q, h, w])``.
            labels: ``[B, N_max]`` int64 class ids (:func:`pad_targets`; None when no image has any).
            counts: number of targets of each image.
            target_points: ``[L, B, N_max, P]`` target values at ``coords`` (:func:`sample_targets`).
            coords: ``[L, B, P, 2]`` the random points of every prediction and image.
        """
        device = predictions[0][0].device
        num_queries = predictions[0][0].shape[1]
        if labels is None or max(counts, default=0) == 0:
            host = [[(np.zeros(0, np.int64), np.zeros(0, np.int64)) for _ in counts] for _ in predictions]
            return _matching(host, counts, num_queries, device)
        costs = torch.stack(
            [
                self.costs(logits, masks, labels, target_points[i], coords[i])
                for i, (logits, masks) in enumerate(predictions)
            ]
        )
        costs = costs.cpu().numpy()  # the one device -> host copy (synchronisation) of the step
        host = [[_assign(costs[i, b, :, :n]) for b, n in enumerate(counts)] for i in range(len(predictions))]
        return _matching(host, counts, num_queries, device)


def _assign(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if cost.shape[1] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, cols = linear_sum_assignment(cost)
    return rows.astype(np.int64), cols.astype(np.int64)


def _matching(
    host: list[list[tuple[np.ndarray, np.ndarray]]], counts: list[int], num_queries: int, device: torch.device
) -> Matching:
    """Flat index tensors of every matched pair, moved to ``device`` in one non-blocking copy."""
    matched = [min(num_queries, n) for n in counts]
    columns = []
    for i, per_image in enumerate(host):
        for b, (rows, cols) in enumerate(per_image):
            n = len(rows)
            columns.append(
                np.stack(
                    [
                        np.full(n, i),
                        np.full(n, b),
                        rows,
                        cols,
                        i * matched[b] + np.arange(n),
                    ]
                ).astype(np.int64)
            )
    flat = torch.from_numpy(np.concatenate(columns, axis=1) if columns else np.zeros((5, 0), np.int64))
    if device.type == "cuda":
        flat = flat.pin_memory()  # so that the copy below does not block the host
    flat = flat.to(device, non_blocking=True)
    return Matching(host, *flat.unbind(0))
