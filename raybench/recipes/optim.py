"""Optimizer factory: SGD / AdamW with Detectron2-style parameter groups and layer-wise LR decay.

Groups are decided per parameter:

- *learning rate*: ``lr`` x ``backbone_lr_mult`` for backbone parameters, further x
  ``layer_decay ** (num_layers - 1 - layer_id)`` when the recipe sets ``layer_decay``;
  the decoder is the last "layer" (scale 1).
- *weight decay*: ``norm_weight_decay`` for parameters of normalisation layers,
  ``embed_weight_decay`` for embeddings (``nn.Embedding`` and the named query / level /
  position embeddings of transformer decoders), ``bias_weight_decay`` for other biases;
  each falls back to ``weight_decay`` when unset (``None``). ``one_d_weight_decay``, when set,
  overrides these for every parameter with fewer than 2 dimensions and every bias (norms,
  biases, ConvNeXt's layer-scale ``gamma``): the rule of ConvNeXt's own
  ``LayerDecayOptimizerConstructor`` (``len(param.shape) == 1 or name.endswith(".bias")``).
- parameters with ``requires_grad=False`` (the frozen regime's backbone) are left out of
  the optimizer entirely, so no optimizer state is ever kept for them; parameters the
  backbone declares head (``head_parameter_names()``: ConvNeXt's output norms in the frozen
  regime) are grouped as decoder parameters.

Layer ids. timm's ``param_groups_layer_decay`` needs the model's ``group_matcher``, which
``features_only`` models (timm's ``FeatureListNet``) do not keep, and its ConvNeXt matcher
gives one id per block (the classification fine-tuning rule). The paper's detection
recipe follows the ConvNeXt paper's Mask R-CNN setting, whose rule groups ConvNeXt into
``3 + depth_of_stage_3 // 3`` layers (6 for ConvNeXt-T: stem 0, stage 1 -> 1, stage 2 ->
2, stage 3 blocks in threes -> 3..5, stage 4 -> 6, decoder -> 7). :func:`layer_ids`
implements that rule over timm's parameter names, and the analogous stage rule for ResNet.
The output norms (:class:`raybench.backbones.Backbone` ``out_norms``; ``backbone.norm{i}`` in
the reference, which falls to its ``else`` branch, ``num_max_layer + 1``) get the decoder's id.
Plain ViTs follow ViTDet's rule (Detectron2 ``get_vit_lr_decay_rate``): embeddings and tokens
0, block ``i`` -> ``i + 1``, the rest (final norm; the simple feature pyramid, which is head
anyway) the decoder's id ``depth + 1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from raybench.study.spec import OptimizerSpec

#: Modules whose parameters count as normalisation parameters.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    nn.GroupNorm,
    nn.LayerNorm,  # timm's LayerNorm2d subclasses it
    nn.LocalResponseNorm,
    nn.RMSNorm,
)
#: Parameter names (last component) that count as embeddings although they are plain
#: ``nn.Parameter``s: the position tables and tokens of transformer backbones (Swin's two are
#: exempt in Mask2Former's optimizer; timm exempts ViT's). Everything else is an embedding only
#: when it lives in an ``nn.Embedding`` -- as in Mask2Former's ``build_optimizer``, so the
#: transformer decoder's queries and level embedding are exempt while the pixel decoder's
#: ``level_embed`` (an ``nn.Parameter`` there too) keeps the weight decay.
EMBED_NAMES: frozenset[str] = frozenset(
    {
        "pos_embed",
        "absolute_pos_embed",
        "cls_token",
        "reg_token",  # DINOv3 / DINOv2-reg ViTs' register tokens
        "dist_token",  # distilled DeiT
        "mask_token",
        "relative_position_bias_table",
    }
)

_CONVNEXT = re.compile(r"(?:^|\.)stages[._](\d+)\.(downsample|blocks)(?:\.(\d+))?")
_STEM = re.compile(r"(?:^|\.)stem[._]")
_RESNET_STAGE = re.compile(r"(?:^|\.)layer(\d+)\.")
_RESNET_STEM = re.compile(r"(?:^|\.)(conv1|bn1|act1)\.")
_OUT_NORM = re.compile(r"(?:^|\.)out_norms\.")
_VIT_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_VIT_EMBED = re.compile(r"(?:^|\.)(patch_embed\.|pos_embed$|cls_token$|reg_token$|dist_token$|mask_token$)")


def weight_decay_kind(module: nn.Module, param_name: str) -> str:
    """``"norm"``, ``"embed"``, ``"bias"`` or ``"default"`` for a parameter owned by ``module``."""
    if isinstance(module, NORM_TYPES) or "norm" in type(module).__name__.lower():
        return "norm"
    leaf = param_name.rsplit(".", 1)[-1]
    if isinstance(module, nn.Embedding) or leaf in EMBED_NAMES:
        return "embed"
    if leaf == "bias":
        return "bias"
    return "default"


@dataclass(frozen=True)
class LayerIds:
    """Layer id of every backbone parameter (by name); the decoder is ``num_layers - 1``."""

    ids: dict[str, int]
    num_layers: int

    def scale(self, name: str, decay: float) -> float:
        return decay ** (self.num_layers - 1 - self.ids[name])


def layer_ids(backbone: nn.Module) -> LayerIds:
    """Layer ids for ConvNeXt-like (``stem`` + ``stages``), plain ViT (``patch_embed`` +
    ``blocks``) and ResNet-like (``layer1..4``) bodies."""
    names = [n for n, _ in backbone.named_parameters()]
    if any(_CONVNEXT.search(n) for n in names):
        return _convnext_ids(names)
    if any(_VIT_BLOCK.search(n) for n in names) and any(_VIT_EMBED.search(n) for n in names):
        return _vit_ids(names)
    if any(_RESNET_STAGE.search(n) for n in names):
        return _resnet_ids(names)
    raise ValueError(
        "layer_decay is set but raybench has no layer-id rule for this backbone "
        f"(parameters like {names[:3]}); known: ConvNeXt (stem/stages), plain ViT "
        "(patch_embed/blocks) and ResNet (layer1..4). "
        "Remove layer_decay from the recipe or add a rule in raybench/recipes/optim.py"
    )


def _vit_ids(names: list[str]) -> LayerIds:
    """ViTDet's rule (Detectron2 ``get_vit_lr_decay_rate``, ``num_layers`` = depth D): patch and
    position embeddings id 0 (here also the class / register / distillation / mask tokens, as
    MAE's and BEiT's ``param_groups_lrd`` put ``cls_token``), block ``i`` id ``i + 1``,
    everything else (the final norm, the pyramid) ``D + 1``, the decoder's id: scale
    ``decay ** (D + 1 - id)``, so block ``i`` gets ``decay ** (D - i)``."""
    depth = 1 + max(int(m.group(1)) for n in names if (m := _VIT_BLOCK.search(n)))
    ids: dict[str, int] = {}
    for n in names:
        m = _VIT_BLOCK.search(n)
        ids[n] = int(m.group(1)) + 1 if m else 0 if _VIT_EMBED.search(n) else depth + 1
    return LayerIds(ids, depth + 2)


def _convnext_ids(names: list[str]) -> LayerIds:
    depth3 = 1 + max(
        (int(m.group(3)) for n in names if (m := _CONVNEXT.search(n)) and m.group(1) == "2" and m.group(3)),
        default=-1,
    )
    last = 3 + depth3 // 3  # ConvNeXt-T: 6; ConvNeXt-S/B: 12 (the ConvNeXt detection configs)
    ids: dict[str, int] = {}
    for n in names:
        m = _CONVNEXT.search(n)
        if m is None:
            ids[n] = 0 if _STEM.search(n) else last + 1 if _OUT_NORM.search(n) else last
            continue
        stage, part, block = int(m.group(1)), m.group(2), m.group(3)
        if stage == 0:
            ids[n] = 1
        elif stage == 1:
            ids[n] = 2
        elif stage == 2:
            ids[n] = 3 if part == "downsample" else 3 + int(block) // 3
        else:
            ids[n] = last
    return LayerIds(ids, last + 2)


def _resnet_ids(names: list[str]) -> LayerIds:
    stages = [int(m.group(1)) for n in names if (m := _RESNET_STAGE.search(n))]
    last = max(stages)
    ids: dict[str, int] = {}
    for n in names:
        m = _RESNET_STAGE.search(n)
        ids[n] = int(m.group(1)) if m else (0 if _RESNET_STEM.search(n) else last)
    return LayerIds(ids, last + 2)


def param_groups(
    model: nn.Module, spec: OptimizerSpec, *, backbone: nn.Module | None = None
) -> list[dict[str, Any]]:
    """Parameter groups (deterministic order) with ``lr``, ``weight_decay``, ``lr_scale``, ``name``.

    ``backbone`` is the submodule of ``model`` that gets ``backbone_lr_mult`` and layer decay.
    """
    in_backbone: dict[int, str] = {}
    lids: LayerIds | None = None
    if backbone is not None:
        head = set(getattr(backbone, "head_parameter_names", list)())
        in_backbone = {id(p): n for n, p in backbone.named_parameters() if n not in head}
        if spec.layer_decay is not None and spec.layer_decay != 1.0:
            lids = layer_ids(backbone)
    decay_for = {
        "norm": spec.norm_weight_decay,
        "embed": spec.embed_weight_decay,
        "bias": spec.bias_weight_decay,
        "default": None,
    }
    groups: dict[tuple[str, int, float], dict[str, Any]] = {}
    seen: set[int] = set()
    for _, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            kind = weight_decay_kind(module, pname)
            wd = decay_for[kind]
            if spec.one_d_weight_decay is not None and (p.ndim <= 1 or pname == "bias"):
                wd = spec.one_d_weight_decay
            wd = spec.weight_decay if wd is None else wd
            part, layer, scale = "decoder", -1, 1.0
            if id(p) in in_backbone:
                part, scale = "backbone", spec.backbone_lr_mult
                if lids is not None:
                    layer = lids.ids[in_backbone[id(p)]]
                    scale *= lids.scale(in_backbone[id(p)], float(spec.layer_decay))
            key = (part, layer, float(wd))
            if key not in groups:
                label = f"{part}" + (f".layer{layer}" if layer >= 0 else "") + ("" if wd else ".no_wd")
                groups[key] = {
                    "params": [],
                    "lr": spec.lr * scale,
                    "lr_scale": scale,
                    "weight_decay": float(wd),
                    "name": label,
                }
            groups[key]["params"].append(p)
    return list(groups.values())


def build_optimizer(
    model: nn.Module, spec: OptimizerSpec, *, backbone: nn.Module | None = None
) -> torch.optim.Optimizer:
    """SGD (momentum, as Detectron2) or AdamW over :func:`param_groups`.

    ``spec.fused`` None: with every parameter on CUDA the fused implementation is used (one
    kernel for the whole update instead of several per parameter group); on CPU the default
    one, so CPU runs keep their exact numbers. True / False: fused everywhere / nowhere.
    """
    groups = param_groups(model, spec, backbone=backbone)
    if not groups:
        raise ValueError("the model has no trainable parameter: nothing to optimise")
    fused = spec.fused if spec.fused is not None else all(p.is_cuda for g in groups for p in g["params"])
    fast: dict[str, Any] = {"fused": True} if fused else {}
    if spec.name == "sgd":
        return torch.optim.SGD(
            groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay, **fast
        )
    if spec.name == "adamw":
        return torch.optim.AdamW(
            groups, lr=spec.lr, betas=tuple(spec.betas), weight_decay=spec.weight_decay, **fast
        )
    raise ValueError(f"unknown optimizer {spec.name!r}; expected 'sgd' or 'adamw'")
