"""Mask2Former's set criterion: Hungarian matching, then class CE + point-sampled mask BCE and dice.

Per prediction (the final one, then every auxiliary one in order): match queries to targets, then

* ``loss_ce``: cross-entropy over all queries, unmatched ones labelled "no object" (weight 0.1);
* ``loss_mask`` / ``loss_dice``: on ``num_points`` points per matched mask chosen by uncertainty
  (PointRend importance sampling), normalised by the number of target masks in the batch (averaged
  over workers when ``torch.distributed`` is initialised).

Terms come back already multiplied by their weights (class 2, mask 5, dice 5 by default), with the
index of the auxiliary prediction as suffix (``loss_ce_0`` is the prediction from the learnt queries).

Random draws happen in the reference order (matcher: one ``torch.rand(1, P, 2)`` per image; then the
oversampled and the extra uniform points of :func:`uncertain_point_coords`), from ``generator`` or the
global RNG, so that seeding reproduces the reference's points exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .matcher import HungarianMatcher
from .point_sampling import point_sample, uncertain_point_coords


def dice_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Sum over masks of ``1 - (2|p t| + 1) / (|p| + |t| + 1)``, divided by ``num_masks``."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_ce_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Per-mask mean binary cross-entropy over its points, summed and divided by ``num_masks``."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def _num_masks(targets: Sequence[dict[str, Tensor]], device: torch.device) -> float:
    num = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
    world = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(num)
        world = torch.distributed.get_world_size()
    return max(num.item() / world, 1.0)


class Mask2FormerCriterion(nn.Module):
    """Losses of one Mask2Former output dict (see the module docstring)."""

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weights = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        # Not persistent: a constant of the recipe, not a learnt tensor (keeps state dicts clean).
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def forward(
        self,
        outputs: dict,
        targets: Sequence[dict[str, Tensor]],
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Weighted loss terms for the final and every auxiliary prediction in ``outputs``.

        ``targets``: per image ``labels`` int64 ``[N]`` in ``0..K-1`` and ``masks`` ``[N, H, W]``.
        """
        device = outputs["pred_logits"].device
        num_masks = _num_masks(targets, device)
        # Float masks once for all predictions; the matcher reads them unpadded (as transformers'
        # matcher does), the mask losses padded to the batch's largest size (as both references do).
        targets = [
            {"labels": t["labels"].to(device), "masks": t["masks"].to(device=device, dtype=torch.float32)}
            for t in targets
        ]
        target_masks = self._padded_target_masks(targets)
        predictions = [outputs, *outputs.get("aux_outputs", [])]
        losses: dict[str, Tensor] = {}
        sampled: list[_SampledPoints] = []
        for pred in predictions:
            indices = self.matcher(pred["pred_logits"], pred["pred_masks"], targets, generator)
            losses["loss_ce" + _suffix(len(sampled))] = self.loss_labels(
                pred["pred_logits"], targets, indices
            )
            sampled.append(self._sample_points(pred, target_masks, indices, generator))

        point_logits = self._point_logits(predictions, outputs.get("mask_features"), sampled)
        for i, (points, logits) in enumerate(zip(sampled, point_logits)):
            if logits is None:  # no target in the whole batch: nothing to segment
                zero = predictions[i]["pred_logits"].sum() * 0.0
                losses["loss_mask" + _suffix(i)] = losses["loss_dice" + _suffix(i)] = zero
                continue
            losses["loss_mask" + _suffix(i)] = sigmoid_ce_loss(logits, points.labels, num_masks)
            losses["loss_dice" + _suffix(i)] = dice_loss(logits, points.labels, num_masks)
        # "loss_ce_3" is weighted like "loss_ce".
        ordered = _ordered(losses, len(predictions))
        return {name: value * self.weights["_".join(name.split("_")[:2])] for name, value in ordered.items()}

    def loss_labels(
        self, pred_logits: Tensor, targets: Sequence[dict[str, Tensor]], indices: list[tuple[Tensor, Tensor]]
    ) -> Tensor:
        """Cross-entropy with every unmatched query labelled "no object" (down-weighted)."""
        batch, num_queries, _ = pred_logits.shape
        device = pred_logits.device
        target_classes = torch.full((batch, num_queries), self.num_classes, dtype=torch.int64, device=device)
        for b, (src, tgt) in enumerate(indices):
            target_classes[b, src.to(device)] = targets[b]["labels"][tgt.to(device)]
        return F.cross_entropy(pred_logits.float().transpose(1, 2), target_classes, self.empty_weight)

    @staticmethod
    def _padded_target_masks(targets: Sequence[dict[str, Tensor]]) -> list[Tensor]:
        """Target masks zero-padded to the largest size in the batch (like the reference)."""
        height = max(int(t["masks"].shape[-2]) for t in targets)
        width = max(int(t["masks"].shape[-1]) for t in targets)
        padded = []
        for t in targets:
            m = t["masks"]
            if m.shape[-2:] != (height, width):
                m = F.pad(m, (0, width - m.shape[-1], 0, height - m.shape[-2]))
            padded.append(m)
        return padded

    def _sample_points(
        self,
        pred: dict,
        target_masks: list[Tensor],
        indices: list[tuple[Tensor, Tensor]],
        generator: torch.Generator | None,
    ) -> _SampledPoints:
        """Uncertainty-sampled points of the matched masks and the targets' values there (no grad)."""
        pred_masks = pred["pred_masks"]
        device = pred_masks.device
        counts = [len(src) for src, _ in indices]
        src_b = torch.cat([torch.full((n,), b, dtype=torch.int64) for b, n in enumerate(counts)]).to(device)
        src_q = torch.cat([src for src, _ in indices]).to(device)
        if src_q.numel() == 0:
            return _SampledPoints(src_b, src_q, None, None)
        with torch.no_grad():
            coords = uncertain_point_coords(
                pred_masks[src_b, src_q].detach().float().unsqueeze(1),
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
                generator,
            )
            tgt = torch.cat([target_masks[b][j.to(device)] for b, (_, j) in enumerate(indices)])
            labels = point_sample(tgt.unsqueeze(1), coords).squeeze(1)
        return _SampledPoints(src_b, src_q, coords, labels)

    @staticmethod
    def _point_logits(
        predictions: list[dict], mask_features: Tensor | None, sampled: list[_SampledPoints]
    ) -> list[Tensor | None]:
        """Mask logits (with autograd) of every prediction's matched masks at its sampled points.

        If the dense masks carry autograd (the reference's way) they are sampled directly. Otherwise
        the matched masks of all predictions are rebuilt from their embeddings in one batched matmul
        with ``mask_features`` (the only masks the loss reads; same values), then sampled in one call.
        """
        dense = mask_features is None or any(
            p["pred_masks"].requires_grad or "mask_embed" not in p for p in predictions
        )
        if dense:
            return [
                None
                if s.coords is None
                else point_sample(p["pred_masks"][s.src_b, s.src_q].float().unsqueeze(1), s.coords).squeeze(1)
                for p, s in zip(predictions, sampled)
            ]
        used = [i for i, s in enumerate(sampled) if s.coords is not None]
        if not used:
            return [None] * len(sampled)
        batch = mask_features.shape[0]
        embed = torch.cat([predictions[i]["mask_embed"][sampled[i].src_b, sampled[i].src_q] for i in used])
        image = torch.cat([sampled[i].src_b for i in used])
        # Slot of each matched mask among its image's rows of the padded [B, M, C] embedding batch.
        order = torch.argsort(image, stable=True)
        per_image = torch.bincount(image, minlength=batch)
        starts = torch.cumsum(per_image, 0) - per_image
        slot = torch.empty_like(image)
        slot[order] = torch.arange(image.numel(), device=image.device) - starts[image[order]]
        padded = embed.new_zeros(batch, int(per_image.max()), embed.shape[1]).index_put((image, slot), embed)
        masks = torch.bmm(padded, mask_features.flatten(2))[image, slot]  # [M, h*w]
        masks = masks.view(-1, 1, *mask_features.shape[-2:]).float()
        coords = torch.cat([sampled[i].coords for i in used])
        logits = point_sample(masks, coords).squeeze(1).split([len(sampled[i].src_q) for i in used])
        out: list[Tensor | None] = [None] * len(sampled)
        for i, value in zip(used, logits):
            out[i] = value
        return out


class _SampledPoints(NamedTuple):
    src_b: Tensor  # image of each matched query
    src_q: Tensor  # matched query indices
    coords: Tensor | None  # [Nm, P, 2] sampled point coordinates, None if nothing matched
    labels: Tensor | None  # [Nm, P] target values at those points


def _suffix(i: int) -> str:
    """'' for the final prediction, '_j' for auxiliary prediction j."""
    return "" if i == 0 else f"_{i - 1}"


def _ordered(losses: dict[str, Tensor], num_predictions: int) -> dict[str, Tensor]:
    """Terms in a stable order: per prediction, ce / mask / dice."""
    return {
        name + _suffix(i): losses[name + _suffix(i)]
        for i in range(num_predictions)
        for name in ("loss_ce", "loss_mask", "loss_dice")
    }
