"""Mask2Former head for semantic segmentation on a 4-level backbone (strides 4, 8, 16, 32).

``Mask2FormerHead`` = pixel decoder + masked-attention transformer decoder + criterion. The backbone
is not part of it: ``forward`` takes the backbone's feature maps, so any raybench backbone (ConvNeXt-T,
ResNet-50) plugs in unchanged. Its options are declared once, with their defaults, in
``raybench.study.model_options.Mask2FormerOptions`` (see :meth:`Mask2FormerHead.from_options`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .criterion import Mask2FormerCriterion
from .matcher import HungarianMatcher
from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import MaskedTransformerDecoder

if TYPE_CHECKING:
    from raybench.study.model_options import Mask2FormerOptions


class Mask2FormerHead(nn.Module):
    """Mask2Former on backbone features: ``forward`` -> predictions, ``loss`` -> weighted terms.

    Keyword-only arguments without defaults, as the official implementation's configurable
    modules: the values come from :class:`~raybench.study.model_options.Mask2FormerOptions`
    (:meth:`from_options`), the one place the defaults are declared, whose fields are named
    as these arguments. ``num_classes`` (K; the class head adds "no object") and
    ``in_channels`` (the backbone's 4 levels, strides 4..32) come from the data and the
    backbone. See ``Mask2FormerOptions`` for what each option means.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: Sequence[int],
        num_queries: int,
        hidden_dim: int,
        conv_dim: int,
        enc_layers: int,
        dec_layers: int,
        mask_dim: int,
        nheads: int,
        dim_feedforward: int,
        enc_dim_feedforward: int,
        n_points: int,
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
        class_weight: float,
        mask_weight: float,
        dice_weight: float,
        no_object_weight: float,
        class_cost: float,
    ):
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        if len(in_channels) != 4:
            raise ValueError(f"in_channels must list 4 levels (strides 4..32), got {in_channels}")
        if dec_layers < 1:
            raise ValueError("dec_layers counts predictions and must be >= 1")
        self.num_classes = num_classes
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            in_channels=in_channels,
            conv_dim=conv_dim,
            mask_dim=mask_dim,
            num_layers=enc_layers,
            dim_feedforward=enc_dim_feedforward,
            num_heads=nheads,
            num_points=n_points,
        )
        # dec_layers counts the prediction from the learnt queries too (official DEC_LAYERS).
        self.predictor = MaskedTransformerDecoder(
            num_classes=num_classes,
            in_channels=conv_dim,
            hidden_dim=hidden_dim,
            num_queries=num_queries,
            num_heads=nheads,
            dim_feedforward=dim_feedforward,
            num_layers=dec_layers - 1,
            mask_dim=mask_dim,
        )
        # The official matcher's mask and dice costs are the loss weights.
        matcher = HungarianMatcher(
            class_cost=class_cost, mask_cost=mask_weight, dice_cost=dice_weight, num_points=num_points
        )
        self.criterion = Mask2FormerCriterion(
            num_classes=num_classes,
            matcher=matcher,
            class_weight=class_weight,
            mask_weight=mask_weight,
            dice_weight=dice_weight,
            no_object_weight=no_object_weight,
            num_points=num_points,
            oversample_ratio=oversample_ratio,
            importance_sample_ratio=importance_sample_ratio,
        )

    @classmethod
    def from_options(
        cls, options: Mask2FormerOptions, *, num_classes: int, in_channels: Sequence[int]
    ) -> Mask2FormerHead:
        """The head of ``options`` (every field passed on by its name) for ``num_classes``
        classes on a backbone with ``in_channels``."""
        values = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
        return cls(num_classes=num_classes, in_channels=in_channels, **values)

    def forward(self, features: Sequence[Tensor]) -> dict:
        """Predict from 4 backbone maps (strides 4, 8, 16, 32).

        Returns a dict with ``pred_logits`` ``[B, Q, K+1]``, ``pred_masks`` ``[B, Q, H/4, W/4]`` (mask
        logits), ``aux_outputs`` (one dict per earlier prediction, learnt queries first), plus
        ``mask_features`` and ``mask_embed`` used by :meth:`loss`. Unless the predictor's
        ``dense_mask_grad`` switch is on, the ``pred_masks`` tensors carry no autograd graph:
        train through :meth:`loss`.
        """
        mask_features, multi_scale = self.pixel_decoder(features)
        out = self.predictor(multi_scale, mask_features)
        out["mask_features"] = mask_features
        return out

    def loss(
        self, outputs: dict, targets: Sequence[dict[str, Tensor]], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Weighted loss terms (``loss_ce``, ``loss_mask``, ``loss_dice``, ``*_i`` for auxiliary
        prediction ``i``) and their sum under ``loss``.

        ``targets`` per image: ``labels`` int64 ``[N]`` (0..K-1) and ``masks`` ``[N, H, W]`` at input
        resolution (see :func:`semantic_to_targets`). ``generator`` feeds the point sampling.
        """
        terms = self.criterion(outputs, targets, generator)
        terms["loss"] = torch.stack(list(terms.values())).sum()
        return terms


def semantic_to_targets(sem_seg: Tensor, num_classes: int, ignore_index: int = 255) -> dict[str, Tensor]:
    """Semantic map ``[H, W]`` (class ids 0..K-1, ``ignore_index`` = ignore) -> one mask per class present.

    Returns ``labels`` int64 ``[N]`` (sorted class ids) and ``masks`` bool ``[N, H, W]``. Ignore pixels
    belong to no mask, so the mask losses treat them as background of every target mask - as official
    Mask2Former's semantic dataset mapper does (its losses have no ignore handling). An image that is
    all ignore gives zero targets: every query is then trained towards "no object".
    """
    if sem_seg.dim() != 2:
        raise ValueError(f"sem_seg must be [H, W], got shape {tuple(sem_seg.shape)}")
    classes = torch.unique(sem_seg)
    classes = classes[classes != ignore_index]
    if classes.numel() and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(
            f"class ids must lie in 0..{num_classes - 1} or be {ignore_index}, got {classes.tolist()}"
        )
    masks = sem_seg.unsqueeze(0) == classes.view(-1, 1, 1)
    return {"labels": classes.to(torch.int64), "masks": masks}


def semantic_to_targets_batch(
    sem_seg: Tensor, num_classes: int, ignore_index: int = 255
) -> list[dict[str, Tensor]]:
    """:func:`semantic_to_targets` of every image of a batch ``[B, H, W]``, with one host sync.

    Same result, image by image (labels sorted, bool masks, ignore pixels in no mask, the same
    ``ValueError`` for class ids outside ``0..K-1``). Per image, ``torch.unique`` and the range
    checks each wait for the device; here the classes present in every image and the range check
    come back in one device-to-host copy, and all labels go to the device in one non-blocking copy.
    """
    if sem_seg.dim() != 3:
        raise ValueError(f"sem_seg must be [B, H, W], got shape {tuple(sem_seg.shape)}")
    batch = sem_seg.shape[0]
    device = sem_seg.device
    flat = sem_seg.reshape(batch, -1).long()
    valid = flat != ignore_index
    in_range = (flat >= 0) & (flat < num_classes)
    # Column num_classes collects ignore and out-of-range pixels.
    column = torch.where(valid & in_range, flat, torch.full_like(flat, num_classes))
    present = torch.zeros(batch, num_classes + 1, dtype=torch.bool, device=device).scatter_(1, column, True)
    summary = torch.cat([present[:, :num_classes], (valid & ~in_range).any(1, keepdim=True)], 1)
    summary = summary.cpu().numpy()  # the one synchronisation
    for b in range(batch):
        if summary[b, num_classes]:
            semantic_to_targets(sem_seg[b], num_classes, ignore_index)  # raises with the offending ids
    per_image = [np.flatnonzero(summary[b, :num_classes]) for b in range(batch)]
    labels = torch.from_numpy(np.concatenate(per_image).astype(np.int64))
    if device.type == "cuda":
        labels = labels.pin_memory()  # so that the copy below does not block the host
    labels = labels.to(device, non_blocking=True)
    out = []
    for b, part in enumerate(labels.split([len(x) for x in per_image])):
        out.append({"labels": part, "masks": sem_seg[b].unsqueeze(0) == part.view(-1, 1, 1)})
    return out


def semantic_inference(
    pred_logits: Tensor, pred_masks: Tensor, size: tuple[int, int] | None = None
) -> Tensor:
    """Per-class scores ``[B, K, H, W]`` = sum over queries of p(class) * sigmoid(mask).

    ``softmax(pred_logits)[..., :-1]`` drops "no object". With ``size`` the mask logits are first
    resized bilinearly (``align_corners=False``), as the official inference does before combining.
    The argmax over K is the semantic prediction.
    """
    if size is not None:
        pred_masks = F.interpolate(pred_masks, size=size, mode="bilinear", align_corners=False)
    probs = pred_logits.softmax(-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probs, pred_masks.sigmoid())
