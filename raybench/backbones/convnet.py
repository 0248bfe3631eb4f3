"""Hierarchical models (ConvNeXt, ResNet-GN, EfficientNet, Swin, ...) through timm's
``features_only`` extractor: the four levels are the body's own stages (``out_indices``),
plus, on ConvNeXt, the official detection / segmentation backbones' output norms."""

from __future__ import annotations

from raybench.backbones.base import Backbone, BackboneAdapter, ModelInfo
from raybench.study.spec import BackboneSpec


def supports_output_norms(spec: BackboneSpec) -> bool:
    """Output norms exist for ConvNeXt (the official detection/segmentation backbones' ``norm{i}``)."""
    return spec.model_name.startswith("convnext")


def output_norms_enabled(spec: BackboneSpec) -> bool:
    """The backbone entry's ``output_norms``, defaulting to the architecture's official choice."""
    return supports_output_norms(spec) if spec.output_norms is None else bool(spec.output_norms)


def _features_only_problems(spec: BackboneSpec, info: ModelInfo) -> list[tuple[str, str]]:
    if spec.pyramid_channels is not None:
        return [
            (
                "pyramid_channels",
                "pyramid_channels applies to plain ViTs (ViTDet's simple feature pyramid); this "
                "backbone gives its own 4 levels: remove the key",
            )
        ]
    return []


#: Hierarchical models (ConvNeXt, ResNet, ...): timm's ``features_only`` extractor. The
#: fallback for any model no other adapter claims.
FEATURES_ONLY = BackboneAdapter(
    name="features_only",
    model_types=(),
    create_kwargs=lambda spec: {"features_only": True, "out_indices": spec.out_indices or (-4, -3, -2, -1)},
    wrap=lambda body, spec: Backbone(body, spec.id, output_norms=output_norms_enabled(spec)),
    problems=_features_only_problems,
)
