"""Masked-attention transformer decoder (Mask2Former's ``MultiScaleMaskedTransformerDecoder``).

``num_queries`` learnt queries go through ``num_layers`` layers of masked cross-attention -> self-
attention -> FFN (post-norm), cycling over the three multi-scale features from coarse to fine.
Each query's cross-attention is restricted to the foreground of the mask it predicted before the layer
(``sigmoid(mask) >= 0.5`` at the level's resolution); a query whose mask is empty attends everywhere.
A shared head (LayerNorm, class linear, 3-layer mask MLP dotted with the per-pixel ``mask_features``)
predicts from the learnt queries and after every layer: ``num_layers + 1`` predictions in all.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .position_encoding import sine_position_embedding


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections on top of ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """``query`` ``[B, Nq, C]``, ``key``/``value`` ``[B, Nk, C]``; ``attn_mask`` True = may attend."""
        batch, nq, dim = query.shape
        heads = self.num_heads
        q = self.q_proj(query).view(batch, nq, heads, -1).transpose(1, 2)
        k = self.k_proj(key).view(batch, key.shape[1], heads, -1).transpose(1, 2)
        v = self.v_proj(value).view(batch, value.shape[1], heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, nq, dim))


class MaskedDecoderLayer(nn.Module):
    """Masked cross-attention -> self-attention -> FFN, each with residual and post-LayerNorm."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int):
        super().__init__()
        self.cross_attn = MultiHeadAttention(dim, num_heads)
        self.cross_norm = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, num_heads)
        self.self_norm = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.ffn_norm = nn.LayerNorm(dim)

    def forward(
        self, x: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor, attn_mask: Tensor | None
    ) -> Tensor:
        attn = self.cross_attn(x + query_pos, memory + memory_pos, memory, attn_mask)
        x = self.cross_norm(x + attn)
        q = x + query_pos
        x = self.self_norm(x + self.self_attn(q, q, x))
        return self.ffn_norm(x + self.linear2(F.relu(self.linear1(x))))


class MLP(nn.Module):
    """Plain MLP with ReLU between layers (the mask-embedding head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskedTransformerDecoder(nn.Module):
    """Queries -> class logits and mask logits at every layer.

    Keyword-only, without defaults: :class:`Mask2FormerHead` passes every value, from
    ``Mask2FormerOptions`` (``raybench.study.model_options``, where the defaults are declared).

    Args:
        num_classes: K; the class head has K + 1 outputs (the last is "no object").
        in_channels: channels of the multi-scale features (1x1 projection only if != hidden_dim).
        num_layers: masked-attention layers (the paper's "10 decoder layers" counts the prediction
            from the learnt queries too, so 9 here gives 10 predictions).
    """

    num_levels = 3
    #: Keep the autograd graph of every query's full-resolution mask logits (the reference's
    #: way). A switch, not a hyper-parameter: the values are the same either way. Off, the masks
    #: are computed without autograd and ``mask_embed`` is returned, so the criterion rebuilds
    #: the masks of the matched queries only (see ``docs/mask2former.md``): a fraction of the
    #: backward cost and memory.
    dense_mask_grad: bool = False

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        hidden_dim: int,
        num_queries: int,
        num_heads: int,
        dim_feedforward: int,
        num_layers: int,
        mask_dim: int,
    ):
        super().__init__()
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, hidden_dim, 1) if in_channels != hidden_dim else nn.Identity()
            for _ in range(self.num_levels)
        )
        self.level_embed = nn.Embedding(self.num_levels, hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.layers = nn.ModuleList(
            MaskedDecoderLayer(hidden_dim, num_heads, dim_feedforward) for _ in range(num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.layers:
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
            for attn in (layer.cross_attn, layer.self_attn):
                for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
                    nn.init.zeros_(proj.bias)
        for proj in self.input_proj:
            if isinstance(proj, nn.Conv2d):
                nn.init.kaiming_uniform_(proj.weight, a=1)
                nn.init.zeros_(proj.bias)

    def _predict(
        self, output: Tensor, mask_features: Tensor, attn_size: tuple[int, int] | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Heads on the current queries: logits, mask embeddings, mask logits, next attention mask."""
        decoded = self.decoder_norm(output)
        logits = self.class_embed(decoded)
        mask_embed = self.mask_embed(decoded)
        with torch.set_grad_enabled(self.dense_mask_grad and torch.is_grad_enabled()):
            masks = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        attn_mask = None
        if attn_size is not None:
            with torch.no_grad():
                small = F.interpolate(masks, size=attn_size, mode="bilinear", align_corners=False)
                # True = may attend (scaled_dot_product_attention's convention): predicted foreground.
                attn_mask = ~(small.sigmoid().flatten(2) < 0.5)
                # A query with an empty mask attends everywhere instead of nowhere.
                attn_mask |= ~attn_mask.any(-1, keepdim=True)
                attn_mask = attn_mask.unsqueeze(1)  # [B, 1, Q, HW], shared by the heads
        return logits, mask_embed, masks, attn_mask

    def forward(self, multi_scale_features: Sequence[Tensor], mask_features: Tensor) -> dict:
        """Run the decoder.

        Args:
            multi_scale_features: three ``[B, C, h, w]`` maps, coarse to fine (strides 32, 16, 8).
            mask_features: ``[B, mask_dim, H/4, W/4]`` per-pixel embeddings.

        Returns:
            dict with ``pred_logits`` ``[B, Q, K+1]``, ``pred_masks`` ``[B, Q, H/4, W/4]``,
            ``mask_embed`` ``[B, Q, mask_dim]`` of the last prediction and ``aux_outputs``, the same
            three keys for every earlier prediction (the learnt queries first).
        """
        if len(multi_scale_features) != self.num_levels:
            raise ValueError(
                f"expected {self.num_levels} multi-scale features, got {len(multi_scale_features)}"
            )
        memories, memory_pos, sizes = [], [], []
        for i, x in enumerate(multi_scale_features):
            h, w = int(x.shape[-2]), int(x.shape[-1])
            sizes.append((h, w))
            pos = sine_position_embedding(h, w, self.hidden_dim // 2, device=x.device, dtype=x.dtype)
            memory_pos.append(pos.flatten(1).t())  # [HW, C], broadcast over the batch
            memories.append(self.input_proj[i](x).flatten(2).transpose(1, 2) + self.level_embed.weight[i])

        batch = mask_features.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)

        predictions = []
        num_layers = len(self.layers)
        logits, embed, masks, attn_mask = self._predict(
            output, mask_features, sizes[0] if num_layers else None
        )
        predictions.append({"pred_logits": logits, "pred_masks": masks, "mask_embed": embed})
        for i, layer in enumerate(self.layers):
            level = i % self.num_levels
            output = layer(output, query_pos, memories[level], memory_pos[level], attn_mask)
            # The attention mask after the last layer would never be used: skip it.
            next_size = sizes[(i + 1) % self.num_levels] if i + 1 < num_layers else None
            logits, embed, masks, attn_mask = self._predict(output, mask_features, next_size)
            predictions.append({"pred_logits": logits, "pred_masks": masks, "mask_embed": embed})

        out = dict(predictions[-1])
        out["aux_outputs"] = predictions[:-1]
        return out
