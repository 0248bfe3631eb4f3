"""Multi-scale deformable-attention pixel decoder (Mask2Former's ``MSDeformAttnPixelDecoder``).

Strides 8/16/32 are projected to ``conv_dim`` channels, refined jointly by a stack of deformable
self-attention encoder layers (each token attends to ``n_points`` learnt offsets around its reference
point on every level), then an FPN-style top-down step fuses the stride-8 output with the stride-4
backbone feature to produce the per-pixel ``mask_features``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ms_deform_attn import device_constant, multi_scale_deformable_attention
from .position_encoding import sine_position_embedding


class MSDeformAttn(nn.Module):
    """Deformable attention over ``num_levels`` feature maps (Deformable DETR, Zhu et al. 2021)."""

    def __init__(self, embed_dim: int, num_heads: int, num_levels: int, num_points: int):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: offsets start on a ring of directions, one per head."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        offset_normalizer: Tensor,
    ) -> Tensor:
        """Attend from ``query`` ``[B, Nq, C]`` to ``value`` ``[B, S, C]``.

        ``reference_points`` is ``[Nq, 2]`` (x, y) in [0, 1], shared by batch and levels (no padding
        masks, so every level's valid ratio is 1); ``offset_normalizer`` is ``[L, 2]`` (width, height).
        """
        batch, num_queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        v = self.value_proj(value).view(batch, value.shape[1], heads, self.embed_dim // heads)
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
        locations = reference_points[None, :, None, None, None, :] + offsets / offset_normalizer[:, None, :]
        out = multi_scale_deformable_attention(v, spatial_shapes, locations, weights)
        return self.output_proj(out)


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention then a ReLU feed-forward block."""

    def __init__(self, dim: int, dim_feedforward: int, num_heads: int, num_levels: int, num_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(dim, num_heads, num_levels, num_points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        offset_normalizer: Tensor,
    ) -> Tensor:
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, offset_normalizer)
        src = self.norm1(src + attn)
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


def _c2_xavier_fill(module: nn.Conv2d) -> None:
    # Detectron2's c2_xavier_fill, used by Mask2Former for its convolutions.
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder: deformable encoder on strides 8/16/32 plus FPN fusion with stride 4.

    Keyword-only, without defaults: :class:`Mask2FormerHead` passes every value, from
    ``Mask2FormerOptions`` (``raybench.study.model_options``, where the defaults are declared).

    Args:
        in_channels: channels of the backbone features at strides 4, 8, 16, 32 (in that order).
        conv_dim: channels of the transformer encoder and of the returned multi-scale features.
        mask_dim: channels of ``mask_features``.
        num_layers, dim_feedforward, num_heads, num_points: deformable encoder settings.
    """

    num_levels = 3  # the encoder runs on the three coarsest features (strides 8, 16, 32)

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        conv_dim: int,
        mask_dim: int,
        num_layers: int,
        dim_feedforward: int,
        num_heads: int,
        num_points: int,
    ):
        super().__init__()
        in_channels = list(in_channels)
        if len(in_channels) != 4:
            raise ValueError(f"expected 4 feature levels (strides 4, 8, 16, 32), got {len(in_channels)}")
        self.in_channels = tuple(in_channels)
        self.conv_dim = conv_dim
        # input_proj[0] projects the coarsest feature (stride 32), as in the official implementation.
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for c in in_channels[1:][::-1]
        )
        self.level_embed = nn.Parameter(torch.empty(self.num_levels, conv_dim))
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(conv_dim, dim_feedforward, num_heads, self.num_levels, num_points)
            for _ in range(num_layers)
        )
        # FPN step for the stride-4 feature (one extra level: log2(8) - log2(4)).
        self.lateral_convs = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_channels[0], conv_dim, 1, bias=False), nn.GroupNorm(32, conv_dim))]
        )
        self.output_convs = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(conv_dim, conv_dim, 3, padding=1, bias=False),
                    nn.GroupNorm(32, conv_dim),
                    nn.ReLU(),
                )
            ]
        )
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        for layer in self.layers:
            for name, p in layer.named_parameters():
                if p.dim() > 1 and not name.startswith("self_attn."):
                    nn.init.xavier_uniform_(p)
            layer.self_attn.reset_parameters()
        nn.init.normal_(self.level_embed)
        for seq in (*self.lateral_convs, *self.output_convs):
            _c2_xavier_fill(seq[0])
        _c2_xavier_fill(self.mask_features)

    @staticmethod
    def reference_points(
        spatial_shapes: Sequence[tuple[int, int]], device: torch.device, dtype: torch.dtype
    ) -> Tensor:
        """Pixel centres of every level, normalised to [0, 1], as ``[S, 2]`` (x, y)."""
        points = []
        for h, w in spatial_shapes:
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, h - 0.5, h, dtype=dtype, device=device),
                torch.linspace(0.5, w - 0.5, w, dtype=dtype, device=device),
                indexing="ij",
            )
            points.append(torch.stack((ref_x.reshape(-1) / w, ref_y.reshape(-1) / h), -1))
        return torch.cat(points, 0)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Backbone features (strides 4, 8, 16, 32) -> (mask_features, multi-scale features).

        ``mask_features`` is ``[B, mask_dim, H/4, W/4]``; the multi-scale features are the encoder
        outputs ``[B, conv_dim, h, w]`` ordered from stride 32 to stride 8 (coarse to fine), which is
        the order the transformer decoder cycles through.
        """
        if len(features) != 4:
            raise ValueError(f"expected 4 feature maps (strides 4, 8, 16, 32), got {len(features)}")
        coarse = list(features[1:][::-1])  # strides 32, 16, 8
        batch = coarse[0].shape[0]
        device, dtype = coarse[0].device, coarse[0].dtype
        shapes = [(int(x.shape[-2]), int(x.shape[-1])) for x in coarse]

        src = torch.cat([proj(x).flatten(2) for proj, x in zip(self.input_proj, coarse)], dim=2).transpose(
            1, 2
        )
        pos = torch.cat(
            [
                sine_position_embedding(h, w, self.conv_dim // 2, device=device, dtype=dtype).flatten(1).t()
                + self.level_embed[i]
                for i, (h, w) in enumerate(shapes)
            ],
            dim=0,
        )
        reference_points = self.reference_points(shapes, device, dtype)
        # Cached on the device: no host-to-device copy per step.
        offset_normalizer = device_constant(tuple((w, h) for h, w in shapes), dtype, device)
        for layer in self.layers:
            src = layer(src, pos, reference_points, shapes, offset_normalizer)

        outputs = [
            x.transpose(1, 2).reshape(batch, self.conv_dim, h, w)
            for x, (h, w) in zip(src.split([h * w for h, w in shapes], dim=1), shapes)
        ]
        lateral = self.lateral_convs[0](features[0])
        # Bilinear, as the official code does (its comment says nearest).
        fused = lateral + F.interpolate(
            outputs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
        )
        fused = self.output_convs[0](fused)
        return self.mask_features(fused), outputs
