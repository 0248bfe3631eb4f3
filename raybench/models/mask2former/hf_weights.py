"""Copy the weights of a transformers ``Mask2FormerForUniversalSegmentation`` into the port.

Used by the parity tests (and usable for HF checkpoints): pixel decoder, transformer module and class
predictor are mapped tensor by tensor. The mapping is strict: any port tensor left unfilled, any
reference tensor left unused or any shape mismatch raises, listing every offender.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import Tensor, nn

_PIXEL = "model.pixel_level_module.decoder."
_TRANSFORMER = "model.transformer_module."


def _renamed(key: str, rules: list[tuple[str, str]]) -> str | None:
    """``key`` renamed by the first ``(pattern, replacement)`` rule it matches fully (None if none)."""
    for pattern, repl in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def _pixel_decoder_key(key: str) -> str | None:
    rules: list[tuple[str, str]] = [
        (r"input_proj\.(\d)\.(\d)\.(weight|bias)", r"input_projections.\1.\2.\3"),
        (r"level_embed", "level_embed"),
        (r"layers\.(\d+)\.self_attn\.(\w+)\.(weight|bias)", r"encoder.layers.\1.self_attn.\2.\3"),
        (r"layers\.(\d+)\.norm1\.(weight|bias)", r"encoder.layers.\1.self_attn_layer_norm.\2"),
        (r"layers\.(\d+)\.linear1\.(weight|bias)", r"encoder.layers.\1.fc1.\2"),
        (r"layers\.(\d+)\.linear2\.(weight|bias)", r"encoder.layers.\1.fc2.\2"),
        (r"layers\.(\d+)\.norm2\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
        (r"lateral_convs\.0\.(\d)\.(weight|bias)", r"adapter_1.\1.\2"),
        (r"output_convs\.0\.(\d)\.(weight|bias)", r"layer_1.\1.\2"),
        (r"mask_features\.(weight|bias)", r"mask_projection.\1"),
    ]
    renamed = _renamed(key, rules)
    return _PIXEL + renamed if renamed else None


def _predictor_key(key: str) -> tuple[str, Callable[[Tensor], Tensor]] | None:
    """HF key for a port ``predictor.*`` key, with a transform (slicing of packed q/k/v)."""
    keep: Callable[[Tensor], Tensor] = lambda t: t  # noqa: E731
    simple: list[tuple[str, str]] = [
        (r"query_feat\.weight", "queries_features.weight"),
        (r"query_embed\.weight", "queries_embedder.weight"),
        (r"level_embed\.weight", "level_embed.weight"),
        (r"input_proj\.(\d)\.(weight|bias)", r"input_projections.\1.\2"),
        (
            r"layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)",
            r"decoder.layers.\1.self_attn.\2.\3",
        ),
        (r"layers\.(\d+)\.self_norm\.(weight|bias)", r"decoder.layers.\1.self_attn_layer_norm.\2"),
        (r"layers\.(\d+)\.cross_attn\.out_proj\.(weight|bias)", r"decoder.layers.\1.cross_attn.out_proj.\2"),
        (r"layers\.(\d+)\.cross_norm\.(weight|bias)", r"decoder.layers.\1.cross_attn_layer_norm.\2"),
        (r"layers\.(\d+)\.linear1\.(weight|bias)", r"decoder.layers.\1.fc1.\2"),
        (r"layers\.(\d+)\.linear2\.(weight|bias)", r"decoder.layers.\1.fc2.\2"),
        (r"layers\.(\d+)\.ffn_norm\.(weight|bias)", r"decoder.layers.\1.final_layer_norm.\2"),
        (r"decoder_norm\.(weight|bias)", r"decoder.layernorm.\1"),
        (r"mask_embed\.layers\.(\d)\.(weight|bias)", r"decoder.mask_predictor.mask_embedder.\1.0.\2"),
    ]
    renamed = _renamed(key, simple)
    if renamed:
        return _TRANSFORMER + renamed, keep
    m = re.fullmatch(r"layers\.(\d+)\.cross_attn\.(q|k|v)_proj\.(weight|bias)", key)
    if m:
        # nn.MultiheadAttention packs q, k, v projections into in_proj_{weight,bias}.
        part = "qkv".index(m.group(2))
        name = f"{_TRANSFORMER}decoder.layers.{m.group(1)}.cross_attn.in_proj_{m.group(3)}"
        return name, lambda t, part=part: t.chunk(3, dim=0)[part]
    if re.fullmatch(r"class_embed\.(weight|bias)", key):
        return "class_predictor." + key.split(".")[1], keep
    return None


def _is_mapped_reference_key(key: str) -> bool:
    """Reference tensors the port must consume (everything of the head except the backbone/loss)."""
    return key.startswith((_PIXEL, _TRANSFORMER, "class_predictor."))


def load_transformers_weights(port: nn.Module, hf_model: nn.Module) -> None:
    """Copy a transformers ``Mask2FormerForUniversalSegmentation``'s head weights into a ``Mask2FormerHead``.

    Raises ``ValueError`` listing every port tensor without a source, every reference tensor of the
    pixel decoder / transformer module / class predictor left unused, and every shape mismatch.
    """
    reference = hf_model.state_dict()
    target = port.state_dict()
    plan: dict[str, Tensor] = {}
    unmapped, mismatched, used = [], [], set()
    for key, param in target.items():
        mapped: tuple[str, Callable[[Tensor], Tensor]] | None = None
        if key.startswith("pixel_decoder."):
            hf_key = _pixel_decoder_key(key[len("pixel_decoder.") :])
            mapped = (hf_key, lambda t: t) if hf_key else None
        elif key.startswith("predictor."):
            mapped = _predictor_key(key[len("predictor.") :])
        if mapped is None or mapped[0] not in reference:
            unmapped.append(key if mapped is None else f"{key} (looked for {mapped[0]})")
            continue
        hf_key, transform = mapped
        value = transform(reference[hf_key])
        used.add(hf_key)
        if value.shape != param.shape:
            mismatched.append(f"{key}: port {tuple(param.shape)} vs {hf_key} {tuple(value.shape)}")
            continue
        plan[key] = value
    unused = sorted(k for k in reference if _is_mapped_reference_key(k) and k not in used)
    if unmapped or mismatched or unused:
        lines = []
        if unmapped:
            lines.append("port tensors without a source: " + ", ".join(unmapped))
        if mismatched:
            lines.append("shape mismatches: " + "; ".join(mismatched))
        if unused:
            lines.append("reference tensors not used: " + ", ".join(unused))
        raise ValueError("cannot load transformers Mask2Former weights:\n" + "\n".join(lines))
    with torch.no_grad():
        for key, value in plan.items():
            target[key].copy_(value)
