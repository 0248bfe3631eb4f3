"""Semantic segmenters: one raybench :class:`~raybench.backbones.Backbone` + one decoder head.

:class:`SemanticSegmenter` is what the semantic task trains. It takes ``uint8``-range images
``[B, 3, H, W]`` (padded so H and W are multiples of 32), normalises them with the backbone's
own mean/std, sets the batch padding to 0.0 (as Mask2Former's ``ImageList`` padding after
normalisation), runs the backbone (4 maps at strides 4/8/16/32, frozen or not) and a head:

- ``model(images, sem_seg)`` -> dict of scalar loss terms (the loss is computed inside
  ``forward``, so DistributedDataParallel sees one call per step);
- ``model(images)`` -> per-class scores ``[B, C, H, W]`` at the (padded) input size; the
  argmax over C is the prediction.

Heads (each registered for the ``semantic`` task under its study decoder name with
:func:`~raybench.models.registry.register_decoder`, next to its builder):

- ``mask2former``: raybench's Mask2Former port (:mod:`raybench.models.mask2former`); classes are
  ``0..C-1`` with 0 = background; scores = ``semantic_inference`` (sum over queries of
  p(class) x sigmoid(mask)) with the mask logits resized to the input size first, as the
  official inference does. Point sampling draws from the global torch RNG, which the engine
  seeds and checkpoints.
- ``upernet`` / ``fpn``: segmentation-models-pytorch's own ``UPerNetDecoder`` / ``FPNDecoder``
  on the same backbone maps, then dropout + a 1x1 conv to C classes, upsampled bilinearly to the
  input size; loss = cross-entropy over non-ignored pixels (:class:`SmpSemanticHead`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base import initialization as smp_init
from segmentation_models_pytorch.decoders.fpn.decoder import FPNDecoder
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder
from torch import Tensor, nn

from raybench.backbones import Backbone
from raybench.models.mask2former import Mask2FormerHead, semantic_inference, semantic_to_targets_batch
from raybench.models.registry import find_decoder, list_decoders, register_decoder
from raybench.study.model_options import Mask2FormerOptions, SmpOptions

IGNORE_INDEX = 255
#: smp decoders read encoder outputs laid out as [stride 1, stride 2, stride 4, ..., stride 32]
#: (``encoder_depth=5``); raybench backbones give strides 4..32, so two empty slots go first.
SMP_LEADING_LEVELS = 2


class SemanticHead(nn.Module):
    """What :class:`SemanticSegmenter` needs from a head (``num_classes`` includes background)."""

    num_classes: int

    def loss(self, features: Sequence[Tensor], sem_seg: Tensor) -> dict[str, Tensor]:
        """Scalar loss terms of a batch; ``sem_seg`` int64 ``[B, H, W]`` at input size, 255 = ignore."""
        raise NotImplementedError

    def scores(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        """Per-class scores ``[B, num_classes, *size]`` (argmax = prediction)."""
        raise NotImplementedError


class Mask2FormerSemanticHead(SemanticHead):
    """The Mask2Former port as a semantic head.

    Loss terms: ``loss_ce``, ``loss_mask``, ``loss_dice``, each already weighted (class 2 /
    mask 5 / dice 5 by default) and summed over all ``dec_layers`` predictions (the final one
    and the deep-supervision ones); their sum is Mask2Former's total loss.
    """

    def __init__(self, mask2former: Mask2FormerHead, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.num_classes = mask2former.num_classes
        self.ignore_index = ignore_index
        self.mask2former = mask2former

    def loss(self, features: Sequence[Tensor], sem_seg: Tensor) -> dict[str, Tensor]:
        outputs = self.mask2former(features)
        # One host synchronisation for the whole batch (per image: three).
        targets = semantic_to_targets_batch(sem_seg, self.num_classes, self.ignore_index)
        terms = self.mask2former.loss(outputs, targets)  # point sampling: global RNG
        terms.pop("loss")
        grouped: dict[str, Tensor] = {}
        for name, value in terms.items():
            key = "_".join(name.split("_")[:2])  # loss_ce_3 -> loss_ce
            grouped[key] = grouped[key] + value if key in grouped else value
        if not any(len(t["labels"]) for t in targets):
            # No target in this micro-batch (all-ignore crops): the mask branch gets no
            # gradient; a zero term keeps every parameter in the graph (DDP needs that).
            tie = outputs["mask_embed"].sum() + outputs["mask_features"].sum()
            grouped["loss_mask"] = grouped["loss_mask"] + tie * 0.0
        return grouped

    def scores(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        out = self.mask2former(features)
        # One image at a time: the resized mask logits are [Q, H, W] per image (Severstal at
        # 384x2400 with 100 queries: 0.4 GB), the combined scores only [C, H, W].
        return torch.cat(
            [
                semantic_inference(
                    out["pred_logits"][i : i + 1].float(), out["pred_masks"][i : i + 1].float(), size
                )
                for i in range(out["pred_logits"].shape[0])
            ]
        )


class SmpSemanticHead(SemanticHead):
    """An smp decoder (fed raybench's 4 maps) + dropout + 1x1 conv, upsampled to the input size.

    Initialised as smp's own models are (``initialize_decoder`` / ``initialize_head``). Loss:
    ``loss_ce``, pixel cross-entropy averaged over the non-ignored pixels of the batch (0 with
    a graph when every pixel is ignored, never NaN).
    """

    def __init__(
        self,
        decoder: nn.Module,
        decoder_channels: int,
        num_classes: int,
        dropout: float = 0.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.decoder = decoder
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(decoder_channels, num_classes, kernel_size=1)
        smp_init.initialize_decoder(self.decoder)
        smp_init.initialize_head(self.classifier)
        self._batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in decoder.modules())

    def logits(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        x = self.decoder([None] * SMP_LEADING_LEVELS + list(features))
        x = self.classifier(self.dropout(x))
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)

    def loss(self, features: Sequence[Tensor], sem_seg: Tensor) -> dict[str, Tensor]:
        if self._batchnorm and self.training and sem_seg.shape[0] < 2:
            raise ValueError(
                f"{type(self.decoder).__name__} uses BatchNorm (also on 1x1 pooled maps) and needs at "
                "least 2 images per worker micro-batch; raise max_batch_per_worker or use fewer workers"
            )
        logits = self.logits(features, tuple(sem_seg.shape[-2:]))
        total = F.cross_entropy(logits.float(), sem_seg, ignore_index=self.ignore_index, reduction="sum")
        valid = (sem_seg != self.ignore_index).sum().clamp(min=1)
        return {"loss_ce": total / valid}

    def scores(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        return self.logits(features, size)


def normalize_padded(
    backbone: Backbone, images: Tensor, sizes: Sequence[tuple[int, int]] | None = None
) -> Tensor:
    """Normalise with the backbone's mean/std, then set the batch padding (everything outside
    image ``i``'s ``sizes[i]``) to 0.0 = the mean colour: Mask2Former normalises each image and
    pads the batch with ``ImageList.from_tensors(.., size_divisibility)`` (pad value 0.0).
    Without ``sizes`` the whole tensor is taken as image."""
    x = backbone.normalize(images)
    if sizes is not None:
        if len(sizes) != x.shape[0]:
            raise ValueError(f"sizes has {len(sizes)} entries for a batch of {x.shape[0]} images")
        for i, (h, w) in enumerate(sizes):
            x[i, :, h:, :] = 0.0
            x[i, :, :h, w:] = 0.0
    return x


class SemanticSegmenter(nn.Module):
    """``backbone`` (a raybench :class:`Backbone`) + ``head`` (a :class:`SemanticHead`)."""

    def __init__(self, backbone: Backbone, head: SemanticHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward(
        self,
        images: Tensor,
        sem_seg: Tensor | None = None,
        sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor] | Tensor:
        """Loss terms when ``sem_seg`` (int64 ``[B, H, W]``, 255 = ignore) is given, else
        per-class scores ``[B, C, H, W]`` at the input size. ``images``: uint8-range ``[B, 3, H, W]``;
        ``sizes``: each image's (h, w) before batch padding (see :func:`normalize_padded`)."""
        features = self.backbone(normalize_padded(self.backbone, images, sizes))
        if sem_seg is not None:
            return self.head.loss(features, sem_seg)
        return self.head.scores(features, (int(images.shape[-2]), int(images.shape[-1])))


# --- head builders: (backbone channels, classes incl. background, options, ignore) -> head ---
@register_decoder("mask2former", task="semantic", options=Mask2FormerOptions)
def mask2former_head(
    channels: Sequence[int], num_classes: int, options: Mask2FormerOptions, ignore_index: int
) -> SemanticHead:
    """raybench's Mask2Former port, configured by ``options`` alone."""
    head = Mask2FormerHead.from_options(options, num_classes=num_classes, in_channels=channels)
    return Mask2FormerSemanticHead(head, ignore_index)


def _smp_encoder_channels(channels: Sequence[int]) -> list[int]:
    return [0] * SMP_LEADING_LEVELS + list(channels)  # the empty slots have no channels


@register_decoder("upernet", task="semantic", options=SmpOptions)
def upernet_head(
    channels: Sequence[int], num_classes: int, options: SmpOptions, ignore_index: int
) -> SemanticHead:
    """smp's UPerNet decoder + dropout + 1x1 classifier."""
    decoder = UPerNetDecoder(
        encoder_channels=_smp_encoder_channels(channels),
        encoder_depth=5,
        decoder_channels=options.decoder_channels,
    )
    return SmpSemanticHead(decoder, options.decoder_channels, num_classes, options.dropout, ignore_index)


def fpn_segmentation_channels(decoder_channels: int) -> int:
    """FPN's per-level segmentation width: half the pyramid width (smp's 256 -> 128), in
    multiples of 32 because its blocks use ``GroupNorm(32, .)``."""
    return 32 * max(1, decoder_channels // 64)


@register_decoder("fpn", task="semantic", options=SmpOptions)
def fpn_head(
    channels: Sequence[int], num_classes: int, options: SmpOptions, ignore_index: int
) -> SemanticHead:
    """smp's FPN decoder (pyramid ``decoder_channels`` wide) + dropout + 1x1 classifier."""
    seg = fpn_segmentation_channels(options.decoder_channels)
    decoder = FPNDecoder(
        encoder_channels=_smp_encoder_channels(channels),
        encoder_depth=5,
        pyramid_channels=options.decoder_channels,
        segmentation_channels=seg,
        dropout=0.0,  # SmpOptions.dropout is applied by SmpSemanticHead, at the same place
        merge_policy="add",
    )
    return SmpSemanticHead(decoder, seg, num_classes, options.dropout, ignore_index)


def build_segmenter(
    decoder: str, backbone: Backbone, num_classes: int, options: Any, ignore_index: int = IGNORE_INDEX
) -> SemanticSegmenter:
    """``backbone`` + the ``decoder`` head for ``num_classes`` classes (background included).

    ``options``: the recipe's typed model options (``RecipeSpec.model_options(decoder)``).
    """
    entry = find_decoder(decoder)
    if entry is None or entry.task != "semantic":
        raise ValueError(f"no semantic head {decoder!r}; known: {', '.join(list_decoders('semantic'))}")
    return SemanticSegmenter(
        backbone, entry.build(list(backbone.channels), num_classes, options, ignore_index)
    )


__all__ = [
    "IGNORE_INDEX",
    "Mask2FormerSemanticHead",
    "SemanticHead",
    "SemanticSegmenter",
    "SmpSemanticHead",
    "build_segmenter",
    "fpn_head",
    "fpn_segmentation_channels",
    "mask2former_head",
    "normalize_padded",
    "upernet_head",
]
