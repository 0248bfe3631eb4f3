"""timm backbones as 4-level feature extractors (strides 4/8/16/32), with the frozen regime.

Every decoder in raybench (torchvision's FPN detectors, the Mask2Former port, smp decoders)
consumes the same :class:`Backbone`: a list of four feature maps plus ``channels`` and
``strides``. The backbone carries its pretraining's mean/std, because normalisation
belongs to the model, not to the dataset.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from raybench.study.spec import BackboneSpec

STRIDES = (4, 8, 16, 32)


@dataclass(frozen=True)
class KnownBackbone:
    """A named entry: the paper's backbones, so a study can say ``convnext_t``."""

    arch: str
    timm_model: str
    pretrained_tags: dict[str, str]  # pretraining label -> timm pretrained tag


# The paper's three backbones (design brief §1). Any other timm id works too.
KNOWN_BACKBONES: dict[str, KnownBackbone] = {
    "resnet50_gn": KnownBackbone("resnet50_gn", "resnet50_gn", {"supervised": "a1h_in1k"}),
    "convnext_t": KnownBackbone(
        "convnext_t", "convnext_tiny", {"supervised": "fb_in1k", "dinov3": "dinov3_lvd1689m"}
    ),
}


class BackboneWeightsError(RuntimeError):
    """Pretrained weights could not be had (no hub access and no local file)."""


class Backbone(nn.Module):
    """Four feature maps at strides 4/8/16/32 from a timm ``features_only`` model.

    ``frozen=True`` is the paper's frozen regime: no parameter takes gradients, norm layers
    stay in eval mode whatever ``.train()`` says, and the forward pass builds no autograd
    graph (so the frozen regime also saves the backbone's activation memory).
    """

    def __init__(self, body: nn.Module, name: str, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.body = body
        self.name = name
        info = body.feature_info
        self.channels: list[int] = list(info.channels())
        self.strides: list[int] = list(info.reduction())
        if tuple(self.strides) != STRIDES:
            raise ValueError(
                f"backbone {name!r} gives strides {self.strides}; raybench needs {list(STRIDES)} "
                "(set out_indices in the study's backbone entry)"
            )
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.frozen = False

    def freeze(self) -> Backbone:
        """Fix every weight: requires_grad off, eval mode kept across ``train()`` calls."""
        self.frozen = True
        for p in self.body.parameters():
            p.requires_grad_(False)
        self.body.eval()
        return self

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if self.frozen:
            self.body.eval()
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8-range images [B,3,H,W] -> normalised floats with the pretraining's mean/std."""
        return (images.float() - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised images -> [C2, C3, C4, C5] feature maps."""
        if self.frozen:
            with torch.no_grad():
                return list(self.body(x))
        return list(self.body(x))

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)


def resolve_timm_name(spec: BackboneSpec) -> str:
    """The timm id to create: the study's ``timm_name``, or a known arch + pretraining tag."""
    if "." in spec.timm_name or spec.arch not in KNOWN_BACKBONES:
        return spec.timm_name
    known = KNOWN_BACKBONES[spec.arch]
    tag = known.pretrained_tags.get(spec.pretraining)
    return f"{spec.timm_name}.{tag}" if tag else spec.timm_name


def build_backbone(spec: BackboneSpec, *, drop_path_rate: float = 0.0, frozen: bool = False) -> Backbone:
    """Create the backbone of a study entry.

    Weights: a local file (``weights:``) if given; else the timm/HF hub id when
    ``pretrained: true``; random init only when the study says ``pretrained: false``.
    """
    timm_id = resolve_timm_name(spec)
    kwargs: dict[str, object] = {"features_only": True}
    kwargs["out_indices"] = spec.out_indices or (-4, -3, -2, -1)
    if drop_path_rate > 0:
        kwargs["drop_path_rate"] = drop_path_rate
    pretrained = spec.pretrained
    if spec.weights:
        path = Path(spec.weights)
        if not path.is_file():
            raise BackboneWeightsError(f"backbone {spec.id!r}: weights file not found: {path}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        body = timm.create_model(timm_id, pretrained=pretrained, **kwargs)
    except (OSError, ConnectionError, RuntimeError, ValueError) as exc:
        if not pretrained:
            raise
        raise BackboneWeightsError(
            f"could not load pretrained weights for backbone {spec.id!r} "
            f"(timm model {timm_id!r}, hub id 'hf-hub:timm/{timm_id}'): {exc}\n"
            f"Either give the machine access to the Hugging Face hub, or download the weights "
            f"elsewhere and set `weights: /path/to/model.safetensors` on this backbone in the "
            f"study file (or `pretrained: false` for random init, e.g. smoke tests)."
        ) from exc
    cfg = getattr(body, "pretrained_cfg", {}) or {}
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    backbone = Backbone(body, spec.id, mean, std)
    if frozen:
        backbone.freeze()
    return backbone
