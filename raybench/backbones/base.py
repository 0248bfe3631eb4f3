"""The :class:`Backbone` every decoder consumes, and the :class:`BackboneAdapter` contract by
which a family of timm models becomes one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from timm.layers import LayerNorm2d
from torch import nn

from raybench.study.spec import BackboneSpec

STRIDES = (4, 8, 16, 32)
#: eps of the official ConvNeXt backbones' output norms (``LayerNorm(eps=1e-6, channels_first)``).
OUTPUT_NORM_EPS = 1e-6
#: ImageNet's mean / std: the normalisation of a body whose timm config names none.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """Four feature maps at strides 4/8/16/32 from a timm ``features_only`` model (or, in a
    subclass, from another kind of body: :class:`raybench.backbones.vit.ViTBackbone`).

    The body's pretraining mean/std (its timm ``pretrained_cfg``, ImageNet's if it names none)
    come with it: normalisation belongs to the model, not to the dataset.

    ``output_norms=True`` adds a LayerNorm (channels-first, eps 1e-6) on each level, as the
    official ConvNeXt detection and segmentation backbones do before the neck (``norm{i}``;
    timm's ``features_only`` ConvNeXt has none). They are new layers (the classification
    checkpoints do not hold them), so they always train.

    ``frozen=True`` is the paper's frozen regime: no parameter of the pretrained ``body``
    takes gradients, its norm layers stay in eval mode whatever ``.train()`` says, and its
    forward pass builds no autograd graph (so the frozen regime also saves the backbone's
    activation memory). The output norms, if any, are then part of the head.
    """

    def __init__(
        self, body: nn.Module, name: str, *, output_norms: bool = False, channels: list[int] | None = None
    ) -> None:
        super().__init__()
        self.body = body
        self.name = name
        if channels is None:
            info = body.feature_info
            self.channels: list[int] = list(info.channels())
            self.strides: list[int] = list(info.reduction())
        else:  # a body that is not a features_only model says what it gives
            self.channels, self.strides = list(channels), list(STRIDES)
        if tuple(self.strides) != STRIDES:
            raise ValueError(
                f"backbone {name!r} gives strides {self.strides}; raybench needs {list(STRIDES)} "
                "(set out_indices in the study's backbone entry)"
            )
        self.out_norms: nn.ModuleList | None = None
        if output_norms:
            self.out_norms = nn.ModuleList(LayerNorm2d(c, eps=OUTPUT_NORM_EPS) for c in self.channels)
        cfg = getattr(body, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.frozen = False

    def freeze(self) -> Backbone:
        """Fix every pretrained weight: requires_grad off, eval mode kept across ``train()`` calls."""
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

    def body_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What the pretrained body gives (no graph in the frozen regime: see :meth:`forward`)."""
        return list(self.body(x))

    def neck(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """New (always trained) layers between the body and the decoder: the output norms."""
        if self.out_norms is not None:
            feats = [norm(f) for norm, f in zip(self.out_norms, feats)]
        return feats

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised images -> [C2, C3, C4, C5] feature maps."""
        if self.frozen:
            with torch.no_grad():
                feats = self.body_features(x)
        else:
            feats = self.body_features(x)
        return self.neck(feats)

    def head_parameter_names(self) -> list[str]:
        """Parameters (names in this module) the optimizer treats as head, not backbone: the
        output norms in the frozen regime, where nothing pretrained trains (no backbone LR
        multiplier, no layer decay). Fine-tuned, they stay backbone parameters, as the official
        ConvNeXt layout names them (``backbone.norm{i}``)."""
        if not self.frozen or self.out_norms is None:
            return []
        return [f"out_norms.{n}" for n, _ in self.out_norms.named_parameters()]


@dataclass(frozen=True)
class ModelInfo:
    """What the adapters need to know of a timm model before building it (from a shape-only
    model on the meta device)."""

    model_class: type
    patch_size: tuple[int, ...] | None = None


@dataclass(frozen=True)
class BackboneAdapter:
    """One family of timm models (``model_types``: their classes) made into a :class:`Backbone`.

    - ``create_kwargs(spec)``: ``timm.create_model`` arguments of the body (the study's
      ``timm_kwargs`` come first, these override);
    - ``prepare(body)``: the body as its weights are loaded into it (e.g. classifier dropped);
    - ``wrap(body, spec)``: the :class:`Backbone`;
    - ``problems(spec, info)``: ``(key, message)`` pairs for entries it cannot serve;
    - ``ignored_file_keys``: classifier parts of its checkpoints it does not use (besides
      :data:`raybench.backbones.weights.IGNORED_FILE_KEYS`).
    """

    name: str
    model_types: tuple[type, ...]
    create_kwargs: Callable[[BackboneSpec], dict[str, Any]]
    wrap: Callable[[nn.Module, BackboneSpec], Backbone]
    problems: Callable[[BackboneSpec, ModelInfo], list[tuple[str, str]]]
    prepare: Callable[[nn.Module], nn.Module] = lambda body: body
    ignored_file_keys: tuple[str, ...] = ()
