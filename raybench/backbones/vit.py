"""Plain ViTs (timm ``VisionTransformer`` / ``Eva``: DeiT, AugReg, DINOv3 ViTs) as four levels:
ViTDet's simple feature pyramid on the last block. Their layer-wise LR decay ids (ViTDet's
rule) are in :func:`raybench.recipes.optim.layer_ids`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from raybench.backbones.base import STRIDES, Backbone, BackboneAdapter, ModelInfo
from raybench.study.spec import BackboneSpec

#: ViTDet's ``out_channels`` of every pyramid level (``SimpleFeaturePyramid``, all configs).
PYRAMID_CHANNELS = 256
#: eps of Detectron2's channels-first ``LayerNorm`` (``get_norm("LN", c)``), ViTDet's pyramid norm.
PYRAMID_NORM_EPS = 1e-6
#: The patch size the pyramid's strides assume (the last block's map is stride 16).
VIT_PATCH = 16


def _conv_ln(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    """Detectron2's ``Conv2d(..., bias=False, norm=LN)``: a bias-free conv, then LayerNorm."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        LayerNorm2d(out_channels, eps=PYRAMID_NORM_EPS),
    ]


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid (Li et al. 2022; Detectron2 ``SimpleFeaturePyramid``,
    ``scale_factors=(4.0, 2.0, 1.0, 0.5)``, ``norm="LN"``) from one stride-16 map of width
    ``dim`` to four levels at strides 4/8/16/32, each ``channels`` wide:

    - stride 4: deconv 2x2/2 to ``dim/2``, LayerNorm, GELU, deconv 2x2/2 to ``dim/4``;
    - stride 8: deconv 2x2/2 to ``dim/2``;
    - stride 16: the map itself;
    - stride 32: max-pool 2x2/2;

    each then a 1x1 conv and a 3x3 conv to ``channels``, both bias-free and followed by a
    channels-first LayerNorm (eps 1e-6). PyTorch's default initialisation, as ViTDet (which
    does not re-initialise the pyramid). Detectron2's ``top_block`` (P6) is not here: the
    detectors' FPN adds it (``LastLevelMaxPool``), as for every backbone."""

    def __init__(self, dim: int, channels: int = PYRAMID_CHANNELS) -> None:
        super().__init__()
        half, quarter = dim // 2, dim // 4
        scales: list[tuple[list[nn.Module], int]] = [
            (
                [
                    nn.ConvTranspose2d(dim, half, kernel_size=2, stride=2),
                    LayerNorm2d(half, eps=PYRAMID_NORM_EPS),
                    nn.GELU(),
                    nn.ConvTranspose2d(half, quarter, kernel_size=2, stride=2),
                ],
                quarter,
            ),
            ([nn.ConvTranspose2d(dim, half, kernel_size=2, stride=2)], half),
            ([], dim),
            ([nn.MaxPool2d(kernel_size=2, stride=2)], dim),
        ]
        self.levels = nn.ModuleList(
            nn.Sequential(*layers, *_conv_ln(width, channels, 1), *_conv_ln(channels, channels, 3))
            for layers, width in scales
        )
        self.channels = channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[B, dim, H/16, W/16]`` -> maps at strides 4, 8, 16, 32."""
        return [level(x) for level in self.levels]


class ViTBackbone(Backbone):
    """A plain ViT (timm ``VisionTransformer`` / ``Eva``) as four levels: the last block's
    tokens (after the model's final norm) as a stride-16 map, then :class:`SimpleFeaturePyramid`.

    - Input size: any. Images are padded at the bottom / right with 0.0 (= the mean colour,
      after normalising) to a multiple of 32 (two patches), so each level is exactly the padded
      size / its stride (the stride-32 max-pool needs an even token grid); position handling is
      the model's own at that grid (``dynamic_img_size``: learned tables interpolated, RoPE
      computed for the grid).
    - The pyramid is new (no checkpoint holds it): it is head in both regimes, trained with
      the decoder (:meth:`head_parameter_names`), as ViTDet gives it the decoder's learning
      rate (its layer-decay rule's last id). Frozen, only the pyramid trains and the ViT
      builds no autograd graph.
    - The final norm: the model's own (pretrained) ``norm`` on the last block, as DINOv3's
      dense evaluations read their features; ViTDet's MAE ViT has none.
    """

    def __init__(self, body: nn.Module, name: str, *, pyramid_channels: int = PYRAMID_CHANNELS) -> None:
        super().__init__(body, name, channels=[pyramid_channels] * len(STRIDES))
        self.pyramid = SimpleFeaturePyramid(int(body.embed_dim), pyramid_channels)
        self.pad_to = STRIDES[-1]

    def body_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        pad_h, pad_w = (-x.shape[-2]) % self.pad_to, (-x.shape[-1]) % self.pad_to
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return list(
            self.body.forward_intermediates(
                x, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True
            )
        )

    def neck(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.pyramid(feats[-1])

    def head_parameter_names(self) -> list[str]:
        """The pyramid, in both regimes: new layers, trained as the decoder is."""
        return [f"pyramid.{n}" for n, _ in self.pyramid.named_parameters()]


def _vit_problems(spec: BackboneSpec, info: ModelInfo) -> list[tuple[str, str]]:
    problems = []
    if spec.out_indices is not None:
        problems.append(
            (
                "out_indices",
                "a plain ViT gives the pyramid its last block (ViTDet); out_indices applies to "
                "hierarchical (features_only) backbones: remove the key",
            )
        )
    if info.patch_size is not None and tuple(info.patch_size) != (VIT_PATCH, VIT_PATCH):
        problems.append(
            (
                "timm_name",
                f"patch size {tuple(info.patch_size)}: raybench's ViT pyramid needs {VIT_PATCH}x{VIT_PATCH} "
                f"patches (its last block is the stride-{VIT_PATCH} level of strides {list(STRIDES)})",
            )
        )
    return problems


def _vit_prepare(body: nn.Module) -> nn.Module:
    """Drop the classifier and its pooling norm (never used, and an unused trainable parameter
    would stop DistributedDataParallel); keep every block and the final norm."""
    body.prune_intermediate_layers(indices=1, prune_norm=False, prune_head=True)
    return body


#: Plain ViTs: timm's ``VisionTransformer`` (DeiT, AugReg, ...) and ``Eva`` (DINOv3's ViTs,
#: EVA): last block -> :class:`SimpleFeaturePyramid`.
VIT = BackboneAdapter(
    name="vit",
    model_types=(VisionTransformer, Eva),
    create_kwargs=lambda spec: {"num_classes": 0, "dynamic_img_size": True},
    wrap=lambda body, spec: ViTBackbone(
        body, spec.id, pyramid_channels=spec.pyramid_channels or PYRAMID_CHANNELS
    ),
    problems=_vit_problems,
    prepare=_vit_prepare,
    ignored_file_keys=("fc_norm.", "attn_pool."),
)
