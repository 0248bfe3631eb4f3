"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch, no compiled ops.

The reference pure-PyTorch formulation (Deformable DETR's ``ms_deform_attn_core_pytorch``, also used
by transformers) runs one ``grid_sample`` per level, stacks the results into a tensor of shape
``[batch*heads, head_dim, queries, levels*points]``, multiplies it by the attention weights and sums.
On CPU most of its time and memory go into that stacked tensor, its product with the weights and
their gradients, not into the sampling itself.

Bilinear sampling is linear in the value, so the output of one (batch, query, head) is a weighted sum
of ``levels * points * 4`` value rows - the four bilinear corners of each sampling point, weighted by
``attention_weight * bilinear_weight``. That is an embedding-bag with per-sample weights, which
PyTorch computes without materialising the gathered rows. The values are first copied into a table
with a one-pixel zero border around every level (``[B, H, S_pad, C]``): all four corners of any point
that touches its level then exist in the table, and corners outside the level read zeros - exactly
``grid_sample``'s zero padding - so no per-corner validity mask is needed. The backward pass is
written by hand (:class:`_MSDeformAttnFunction`):

* value gradient: the transposed embedding-bag. Entries are sorted once by the row of their top-left
  corner (one key per point, not per corner), four weighted ``embedding_bag`` calls (one per corner)
  accumulate the output gradient per top-left row, and shifted adds move corners 2-4 into place;
* corner-weight gradients: the dot product of the output gradient with each corner's value row,
  gathered as two rows of two neighbouring pixels, in cache-sized chunks;
* location and attention-weight gradients: the chain rule through the bilinear weights, with
  coordinates rounded exactly as ``grid_sample`` (``align_corners=False``) rounds them.

Everything is vectorised over levels, points and corners (the only loops run over cache-sized chunks,
the four corners and the levels). The op runs in float32, like the official CUDA kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

# Bytes of gathered value rows held at once when computing the corner-weight gradients: cache-sized
# on CPU; on a GPU, where each chunk costs kernel launches and caches do not matter, large.
_CHUNK_BYTES = {"cpu": 6 * 1024 * 1024}
_CHUNK_BYTES_DEFAULT = 512 * 1024 * 1024

# Small per-shape constants on the device, made once: creating them from Python lists on every call
# would be a blocking host-to-device copy (a synchronisation) each time on a GPU.
_CONSTANTS: dict[tuple, Tensor] = {}


def device_constant(values: Sequence, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.tensor(values)`` on ``device``, cached (treat as read-only)."""
    key = (tuple(values), dtype, device)
    cached = _CONSTANTS.get(key)
    if cached is None:
        if len(_CONSTANTS) > 256:
            _CONSTANTS.clear()
        cached = _CONSTANTS[key] = torch.tensor(values, dtype=dtype).to(device)
    return cached


class _Layout:
    """Where each level lives in the zero-bordered value table ``[B, H, S_pad, C]``."""

    def __init__(self, spatial_shapes: Sequence[tuple[int, int]], device: torch.device) -> None:
        self.shapes = [(int(h), int(w)) for h, w in spatial_shapes]
        self.padded = [(h + 2, w + 2) for h, w in self.shapes]
        sizes = [hp * wp for hp, wp in self.padded]
        self.starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.num_padded = sum(sizes)
        levels = len(self.shapes)
        self.padded_widths = device_constant([wp for _, wp in self.padded], torch.int64, device).view(
            levels, 1
        )
        self.padded_starts = device_constant(self.starts, torch.int64, device).view(levels, 1)

    def pad(self, value: Tensor) -> Tensor:
        """``[B, S, H, C]`` -> ``[B, H, S_pad, C]`` with a zero border around each level."""
        batch, _, heads, channels = value.shape
        parts = value.permute(0, 2, 1, 3).split([h * w for h, w in self.shapes], dim=2)
        return torch.cat(
            [
                F.pad(x.reshape(batch, heads, h, w, channels), (0, 0, 1, 1, 1, 1)).flatten(2, 3)
                for x, (h, w) in zip(parts, self.shapes)
            ],
            dim=2,
        )

    def unpad(self, table: Tensor) -> Tensor:
        """Inverse of :meth:`pad` (drops the border): ``[B, H, S_pad, C]`` -> ``[B, S, H, C]``."""
        batch, heads, _, channels = table.shape
        parts = table.split([hp * wp for hp, wp in self.padded], dim=2)
        inner = [
            x.view(batch, heads, h + 2, w + 2, channels)[:, :, 1:-1, 1:-1].reshape(
                batch, heads, h * w, channels
            )
            for x, (h, w) in zip(parts, self.shapes)
        ]
        return torch.cat(inner, dim=2).permute(0, 2, 1, 3).contiguous()


class _Geometry:
    """Bilinear geometry of every sampling point (shared by forward and backward).

    ``sampling_locations`` is ``[B, Nq, H, L, P, 2]`` (x, y) normalised to [0, 1] per level.
    Attributes (all ``[B, Nq, H, L, P]``): ``x0``, ``y0`` top-left corner (pixel units, as float),
    ``fx``, ``fy`` fractional offsets, ``inside`` whether any corner lies in the level; ``wh`` is the
    per-level (width, height) as float ``[L, 2]``. Corner order: (x0, y0), (x0 + 1, y0), (x0, y0 + 1),
    (x0 + 1, y0 + 1).
    """

    def __init__(self, sampling_locations: Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> None:
        shapes = device_constant(
            tuple((int(h), int(w)) for h, w in spatial_shapes),
            sampling_locations.dtype,
            sampling_locations.device,
        )
        self.wh = shapes.flip(1)  # [L, 2] (w, h)
        w = self.wh[:, 0:1]
        h = self.wh[:, 1:2]
        # grid_sample with align_corners=False maps a location u in [0, 1] to pixel u * size - 0.5.
        # It is computed exactly as grid_sample's CPU kernel does, from the grid g = 2u - 1, as
        # (g + 1) * (size / 2) - 0.5: reference points start on pixel centres, where bilinear
        # interpolation has a kink, and only identical rounding picks the same one-sided gradient.
        # Clamping to [-2, size + 1] changes neither value nor gradient (all four corners are outside
        # there, so both are zero) but keeps the integer conversion below well defined.
        grid = 2.0 * sampling_locations - 1.0
        ix = torch.minimum(((grid[..., 0] + 1.0) * (w / 2) - 0.5).clamp(min=-2.0), w + 1.0)
        iy = torch.minimum(((grid[..., 1] + 1.0) * (h / 2) - 0.5).clamp(min=-2.0), h + 1.0)
        self.x0 = ix.floor()
        self.y0 = iy.floor()
        self.fx = ix - self.x0
        self.fy = iy - self.y0
        self.inside = (self.x0 >= -1) & (self.x0 <= w - 1) & (self.y0 >= -1) & (self.y0 <= h - 1)

    def bilinear(self) -> Tensor:
        """Weights of the four corners, ``[..., 4]``."""
        gx = 1.0 - self.fx
        gy = 1.0 - self.fy
        return torch.stack((gx * gy, self.fx * gy, gx * self.fy, self.fx * self.fy), dim=-1)

    def top_left_rows(self, layout: _Layout, dtype: torch.dtype) -> Tensor:
        """Row of each point's top-left corner in the padded table viewed as ``[B * H * S_pad, C]``.

        Points entirely outside their level are clamped onto the border (their weights are zero).
        """
        batch, _, heads = self.x0.shape[:3]
        device = self.x0.device
        # Padded coordinates of the top-left corner lie in [0, w] x [0, h] for points inside; points
        # outside (or NaN: their weights propagate the NaN) read row 0 of their level.
        zero = torch.zeros((), dtype=self.x0.dtype, device=device)
        px = torch.where(self.inside, self.x0 + 1, zero).to(dtype)
        py = torch.where(self.inside, self.y0 + 1, zero).to(dtype)
        b = torch.arange(batch, dtype=dtype, device=device).view(batch, 1, 1, 1, 1)
        h = torch.arange(heads, dtype=dtype, device=device).view(1, 1, heads, 1, 1)
        position = layout.padded_starts.to(dtype) + py * layout.padded_widths.to(dtype) + px
        return (b * heads + h) * layout.num_padded + position


class _MSDeformAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, sampling_locations, attention_weights, spatial_shapes):  # type: ignore[override]
        batch, _, heads, channels = value.shape
        _, num_queries, _, levels, points, _ = sampling_locations.shape
        layout = _Layout(spatial_shapes, value.device)
        table = layout.pad(value)
        rows_total = table.shape[0] * table.shape[1] * table.shape[2]
        # 32-bit indices: half the memory kept for backward and a faster sort there.
        index_dtype = torch.int32 if rows_total < 2**31 else torch.int64
        geometry = _Geometry(sampling_locations, spatial_shapes)
        top_left = geometry.top_left_rows(layout, index_dtype)
        wp = layout.padded_widths.to(index_dtype)
        rows = top_left.unsqueeze(-1) + torch.stack([wp * 0, wp * 0 + 1, wp, wp + 1], dim=-1)
        weights = geometry.bilinear() * (attention_weights * geometry.inside).unsqueeze(-1)
        corners = levels * points * 4
        out = F.embedding_bag(
            rows.view(-1, corners),
            table.view(-1, channels),
            per_sample_weights=weights.view(-1, corners),
            mode="sum",
        )
        ctx.save_for_backward(table, sampling_locations, attention_weights, top_left)
        ctx.layout = layout
        ctx.spatial_shapes = spatial_shapes
        return out.view(batch, num_queries, heads * channels)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        table, sampling_locations, attention_weights, top_left = ctx.saved_tensors
        layout: _Layout = ctx.layout
        batch, heads, _, channels = table.shape
        num_queries, levels, points = (
            sampling_locations.shape[1],
            sampling_locations.shape[3],
            sampling_locations.shape[4],
        )
        num_bags = batch * num_queries * heads
        per_bag = levels * points
        flat_table = table.view(-1, channels)
        grad_bags = grad_output.reshape(num_bags, channels).contiguous()
        geometry = _Geometry(sampling_locations, ctx.spatial_shapes)
        bilinear = geometry.bilinear()  # [..., 4]
        scale = attention_weights * geometry.inside  # weight of each point (0 outside its level)
        grad_value = grad_locations = grad_attention = None

        if ctx.needs_input_grad[0]:
            # Transposed embedding-bag, keyed by the top-left corner: one sort for all four corners.
            sorted_rows, order = torch.sort(top_left.reshape(-1))
            # Start of each table row's entries in the sorted keys (``cumsum(bincount) - bincount``
            # without bincount, which synchronises on a GPU to size its output).
            rows = torch.arange(flat_table.shape[0], dtype=sorted_rows.dtype, device=sorted_rows.device)
            offsets = torch.searchsorted(sorted_rows, rows).to(top_left.dtype)
            bag_of_entry = torch.div(order.to(top_left.dtype), per_bag, rounding_mode="floor")
            # One gather of the four weights per point, then contiguous per-corner rows.
            corner_weights = (
                (bilinear * scale.unsqueeze(-1)).view(-1, 4).index_select(0, order).t().contiguous()
            )
            per_corner = [
                F.embedding_bag(
                    bag_of_entry, grad_bags, offsets, per_sample_weights=corner_weights[c], mode="sum"
                ).view(batch * heads, layout.num_padded, channels)
                for c in range(4)
            ]
            # Corner c of a point sits at its top-left row + (0, 1, wp, wp + 1) inside the level block.
            grad_table = per_corner[0]
            for start, (hp, wp) in zip(layout.starts, layout.padded):
                block = slice(start, start + hp * wp)
                for c, shift in ((1, 1), (2, wp), (3, wp + 1)):
                    src = per_corner[c][:, block]
                    grad_table[:, start + shift : start + hp * wp] += src[:, : hp * wp - shift]
            grad_value = layout.unpad(grad_table.view(batch, heads, layout.num_padded, channels))

        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # d out / d corner weight = <grad_out[bag], value[corner]>. Two neighbouring pixels are
            # adjacent rows, so one gather of a double row fetches corners (x0, y) and (x0 + 1, y).
            pairs = flat_table.as_strided((flat_table.shape[0] - 1, 2 * channels), (channels, 1))
            wp = layout.padded_widths.to(top_left.dtype)
            top = top_left.view(num_bags, per_bag)
            bottom = (top_left + wp).view(num_bags, per_bag)
            grad_corner = torch.empty(num_bags, per_bag, 4, dtype=table.dtype, device=table.device)
            budget = _CHUNK_BYTES.get(table.device.type, _CHUNK_BYTES_DEFAULT)
            chunk = max(1, budget // (per_bag * 4 * channels * table.element_size()))
            for start in range(0, num_bags, chunk):
                stop = min(start + chunk, num_bags)
                idx = torch.stack((top[start:stop], bottom[start:stop]), dim=-1).view(-1)
                gathered = pairs.index_select(0, idx).view(stop - start, per_bag, 4, channels)
                grad_corner[start:stop] = (gathered * grad_bags[start:stop, None, None, :]).sum(-1)
            grad_corner = grad_corner.view(bilinear.shape)
            if ctx.needs_input_grad[2]:
                grad_attention = (grad_corner * bilinear).sum(-1) * geometry.inside
            if ctx.needs_input_grad[1]:
                g = grad_corner * scale.unsqueeze(-1)
                fx, fy = geometry.fx, geometry.fy
                d_fx = (g[..., 1] - g[..., 0]) * (1.0 - fy) + (g[..., 3] - g[..., 2]) * fy
                d_fy = (g[..., 2] - g[..., 0]) * (1.0 - fx) + (g[..., 3] - g[..., 1]) * fx
                # ix = (2u - 1 + 1) * size / 2 - 0.5, so d fx / d u = size.
                grad_locations = torch.stack((d_fx * geometry.wh[:, 0:1], d_fy * geometry.wh[:, 1:2]), dim=-1)

        return grad_value, grad_locations, grad_attention, None


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention core (no projections).

    Args:
        value: ``[B, S, H, C]`` per-head values of all levels, flattened level after level.
        spatial_shapes: ``L`` pairs (height, width) with ``sum(h * w) == S``.
        sampling_locations: ``[B, Nq, H, L, P, 2]`` (x, y) normalised to [0, 1] per level.
        attention_weights: ``[B, Nq, H, L, P]`` (already softmax-normalised over L * P).

    Returns:
        ``[B, Nq, H * C]``, equal to the reference ``grid_sample`` formulation (bilinear,
        ``align_corners=False``, zero padding) up to float rounding.
    """
    shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
    if sum(h * w for h, w in shapes) != value.shape[1]:
        raise ValueError(f"spatial shapes {shapes} do not add up to the {value.shape[1]} values")
    out_dtype = value.dtype
    out = _MSDeformAttnFunction.apply(
        value.float(), sampling_locations.float(), attention_weights.float(), shapes
    )
    return out.to(out_dtype)


def multi_scale_deformable_attention_grid_sample(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """The straightforward per-level ``grid_sample`` formulation, kept as a readable reference.

    Same arguments and result as :func:`multi_scale_deformable_attention`; slower and far more
    memory hungry under autograd (see the module docstring). Used by the tests as an oracle.
    """
    batch, _, heads, channels = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2.0 * sampling_locations - 1.0
    out = value.new_zeros(batch * heads, channels, num_queries)
    for level, (h, w) in enumerate(spatial_shapes):
        v = values[level].permute(0, 2, 3, 1).reshape(batch * heads, channels, h, w)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, num_queries, points, 2)
        sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        weight = (
            attention_weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, num_queries, points)
        )
        out = out + (sampled * weight).sum(-1)
    return out.view(batch, heads * channels, num_queries).transpose(1, 2)
