"""Mask2Former's set criterion: Hungarian matching, then class CE + point-sampled mask BCE and dice.

Per prediction (the final one, then every auxiliary one in order): match queries to targets, then

* ``loss_ce``: cross-entropy over all queries, unmatched ones labelled "no object" (weight 0.1);
* ``loss_mask`` / ``loss_dice``: on ``num_points`` points per matched mask chosen by uncertainty
  (PointRend importance sampling), normalised by the number of target masks in the batch (averaged
  over workers when ``torch.distributed`` is initialised).

Terms come back already multiplied by their weights (class 2, mask 5, dice 5 by default), with the
index of the auxiliary prediction as suffix (``loss_ce_0`` is the prediction from the learnt queries).

Batched: every prediction and every image is handled together - one matcher call with one
device-to-host copy per step, one importance-sampling call, one ``grid_sample`` for the targets'
values at the points, one batched loss - with no Python loop over images in the step and no host
synchronisation besides the matcher's copy. The number of matched masks of each image is known on
the host before matching (``min(Q, N_b)``: the assignment is one-to-one), so every random number is
drawn before matching, in one ``torch.rand`` call laid out in the reference's order (per prediction:
the matcher's ``[1, P, 2]`` per image, then the oversampled and the extra uniform points of
:func:`uncertain_point_coords`). The CPU generator is one serial stream, so on CPU those are exactly
the reference's numbers (the parity tests seed both alike); on CUDA they have the same distribution
but split the Philox stream differently from the reference's separate calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .matcher import HungarianMatcher, Matching, pad_targets, sample_targets
from .point_sampling import point_sample, uncertain_point_coords


def _dice_rows(logits: Tensor, targets: Tensor) -> Tensor:
    """Per mask ``1 - (2|p t| + 1) / (|p| + |t| + 1)`` (summed and divided by the number of masks)."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


def _sigmoid_ce_rows(logits: Tensor, targets: Tensor) -> Tensor:
    """Per mask the mean binary cross-entropy over its points (summed and divided likewise)."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)


def _num_masks(counts: Sequence[int], device: torch.device) -> float | Tensor:
    """Target masks in the batch (>= 1), averaged over workers; a float unless distributed.

    The counts are tensor shapes, known on the host: no synchronisation. Distributed, the
    all-reduced count stays a device tensor (no ``.item()``).
    """
    num = float(sum(counts))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        total = torch.full((), num, device=device)
        torch.distributed.all_reduce(total)
        return torch.clamp(total / torch.distributed.get_world_size(), min=1.0)
    return max(num, 1.0)


class Mask2FormerCriterion(nn.Module):
    """Losses of one Mask2Former output dict (see the module docstring).

    Keyword-only, without defaults: the head passes the values of ``Mask2FormerOptions``, the
    one place they are declared.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        matcher: HungarianMatcher,
        class_weight: float,
        mask_weight: float,
        dice_weight: float,
        no_object_weight: float,
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
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
        predictions = [outputs, *outputs.get("aux_outputs", [])]
        num_preds = len(predictions)
        device = outputs["pred_logits"].device
        batch, num_queries = outputs["pred_logits"].shape[:2]
        counts = [int(t["labels"].shape[0]) for t in targets]
        num_matched = sum(min(num_queries, n) for n in counts)  # per prediction, known before matching
        num_masks = _num_masks(counts, device)
        matcher_coords, oversampled, extra = self._draw(num_preds, batch, num_matched, device, generator)

        labels = masks = None
        target_points = matcher_coords.new_zeros(num_preds, batch, 0, self.matcher.num_points)
        if sum(counts):
            # Padded once for all predictions: the mask losses read them padded to the batch's largest
            # size (as both references do); the matcher reads them unpadded (as transformers' does),
            # which is the same tensor whenever the images share one size.
            labels = pad_targets([t["labels"].to(device) for t in targets])
            masks = pad_targets([t["masks"].to(device) for t in targets]).float()
            unpadded = [t["masks"].to(device) for t in targets]
            target_points = sample_targets(unpadded, matcher_coords, masks)
        matching = self.matcher.match(
            [(p["pred_logits"], p["pred_masks"]) for p in predictions],
            labels,
            counts,
            target_points,
            matcher_coords,
        )
        loss_ce = self.loss_labels([p["pred_logits"] for p in predictions], labels, matching)
        if num_matched == 0:  # no target in the whole batch: nothing to segment
            loss_mask = loss_dice = (loss_ce.sum() * 0.0).expand(num_preds)
        else:
            with torch.no_grad():
                coords = uncertain_point_coords(
                    self._matched_masks(predictions, matching, num_matched).float().unsqueeze(1),
                    self.num_points,
                    self.oversample_ratio,
                    self.importance_sample_ratio,
                    draws=(oversampled, extra),
                )
                point_labels = _target_points(masks, matching, coords, num_preds)
            slots = num_preds * max(min(num_queries, n) for n in counts)
            point_logits = self._point_logits(
                predictions, outputs.get("mask_features"), matching, coords, slots
            )
            loss_mask = _sigmoid_ce_rows(point_logits, point_labels).view(num_preds, -1).sum(1) / num_masks
            loss_dice = _dice_rows(point_logits, point_labels).view(num_preds, -1).sum(1) / num_masks
        weighted = {
            "loss_ce": loss_ce * self.weights["loss_ce"],
            "loss_mask": loss_mask * self.weights["loss_mask"],
            "loss_dice": loss_dice * self.weights["loss_dice"],
        }
        # Per prediction ce / mask / dice; "loss_ce_3" is weighted like "loss_ce".
        return {name + _suffix(i): value[i] for i in range(num_preds) for name, value in weighted.items()}

    def _draw(
        self,
        num_preds: int,
        batch: int,
        num_matched: int,
        device: torch.device,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Every random number of the step in one call, laid out in the reference's order.

        Returns the matcher's points ``[L, B, P_match, 2]``, the oversampled points
        ``[L * M, P * oversample_ratio, 2]`` and the extra uniform points ``[L * M, P_random, 2]``
        (None if there are none), ``M`` = matched masks per prediction.
        """
        match_points = self.matcher.num_points
        sampled = int(self.num_points * self.oversample_ratio)
        num_random = self.num_points - int(self.importance_sample_ratio * self.num_points)
        sizes = [batch * match_points * 2, num_matched * sampled * 2, num_matched * num_random * 2]
        flat = torch.rand(num_preds, sum(sizes), device=device, generator=generator)
        parts = flat.split(sizes, dim=1)
        matcher_coords = parts[0].reshape(num_preds, batch, match_points, 2)
        oversampled = parts[1].reshape(num_preds * num_matched, sampled, 2)
        extra = parts[2].reshape(num_preds * num_matched, num_random, 2) if num_random > 0 else None
        return matcher_coords, oversampled, extra

    def loss_labels(self, pred_logits: Sequence[Tensor], labels: Tensor | None, matching: Matching) -> Tensor:
        """Cross-entropy with every unmatched query labelled "no object" (down-weighted), ``[L]``.

        One call for all predictions: per-query terms, then each prediction's weighted mean
        (``sum(w_t * nll) / sum(w_t)``, what ``F.cross_entropy`` with class weights computes).
        """
        logits = torch.stack(list(pred_logits)).float()  # [L, B, Q, K+1]
        num_preds = logits.shape[0]
        target_classes = torch.full(
            logits.shape[:3], self.num_classes, dtype=torch.int64, device=logits.device
        )
        if labels is not None and matching.pred.numel():
            target_classes[matching.pred, matching.image, matching.query] = labels[
                matching.image, matching.target
            ]
        terms = F.cross_entropy(
            logits.flatten(0, 1).transpose(1, 2),
            target_classes.flatten(0, 1),
            self.empty_weight,
            reduction="none",
        )
        weights = self.empty_weight[target_classes]
        return terms.view(num_preds, -1).sum(1) / weights.view(num_preds, -1).sum(1)

    @staticmethod
    def _matched_masks(predictions: list[dict], matching: Matching, num_matched: int) -> Tensor:
        """Dense mask logits of every prediction's matched queries, ``[L * M, h, w]`` (no grad)."""
        image = matching.image.view(len(predictions), num_matched)
        query = matching.query.view(len(predictions), num_matched)
        return torch.cat([p["pred_masks"][image[i], query[i]] for i, p in enumerate(predictions)])

    @staticmethod
    def _point_logits(
        predictions: list[dict], mask_features: Tensor | None, matching: Matching, coords: Tensor, slots: int
    ) -> Tensor:
        """Mask logits (with autograd) of every prediction's matched masks at its sampled points.

        If the dense masks carry autograd (the reference's way) they are sampled directly. Otherwise
        the matched masks of all predictions are rebuilt from their embeddings in one batched matmul
        with ``mask_features`` (the only masks the loss reads; same values), then sampled in one call.
        """
        num_preds = len(predictions)
        num_matched = coords.shape[0] // num_preds
        dense = mask_features is None or any(
            p["pred_masks"].requires_grad or "mask_embed" not in p for p in predictions
        )
        if dense:
            masks = Mask2FormerCriterion._matched_masks(predictions, matching, num_matched)
            return point_sample(masks.float().unsqueeze(1), coords).squeeze(1)
        image = matching.image.view(num_preds, num_matched)
        query = matching.query.view(num_preds, num_matched)
        embed = torch.cat([p["mask_embed"][image[i], query[i]] for i, p in enumerate(predictions)])
        # Matched embeddings of each image in the rows (``slots`` = L * max_b M_b) of a padded batch.
        batch = mask_features.shape[0]
        padded = embed.new_zeros(batch, slots, embed.shape[1]).index_put(
            (matching.image, matching.slot), embed
        )
        masks = torch.bmm(padded, mask_features.flatten(2))[matching.image, matching.slot]  # [L*M, h*w]
        masks = masks.view(-1, 1, *mask_features.shape[-2:]).float()
        return point_sample(masks, coords).squeeze(1)


def _target_points(masks: Tensor, matching: Matching, coords: Tensor, num_preds: int) -> Tensor:
    """Target values at each matched pair's points, ``[L * M, P]``, in one ``grid_sample`` call.

    ``masks`` is ``[B, N_max, H, W]``. A target is matched at most once per prediction, so each
    target mask is sampled at the points of its pair in every prediction (slot ``l`` of a
    ``[B * N_max, L, P]`` grid; unused slots sample anything) without copying the matched masks.
    """
    batch, n_max, height, width = masks.shape
    num_points = coords.shape[1]
    rows = matching.image * n_max + matching.target
    grid = coords.new_zeros(batch * n_max, num_preds, num_points, 2)
    grid[rows, matching.pred] = coords
    values = point_sample(masks.view(batch * n_max, 1, height, width), grid.view(batch * n_max, -1, 2))
    return values.view(batch * n_max, num_preds, num_points)[rows, matching.pred]


def _suffix(i: int) -> str:
    """'' for the final prediction, '_j' for auxiliary prediction j."""
    return "" if i == 0 else f"_{i - 1}"
