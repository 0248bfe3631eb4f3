"""timm backbones as 4-level feature extractors (strides 4/8/16/32), with the frozen regime.

Every decoder in raybench (torchvision's FPN detectors, the Mask2Former port, smp decoders)
consumes the same :class:`Backbone`: a list of four feature maps plus ``channels`` and
``strides``. The backbone carries its pretraining's mean/std, because normalisation
belongs to the model, not to the dataset.

How a timm model becomes four levels depends on its type (:data:`ADAPTERS`, keyed on the
model's class): hierarchical models (ConvNets) through timm's ``features_only``; plain ViTs
(``VisionTransformer``, ``Eva``: DeiT, AugReg, DINOv3 ViTs) through ViTDet's simple feature
pyramid on the last block (:class:`ViTBackbone`).

Modules:

- :mod:`~raybench.backbones.base`: :class:`Backbone` (levels, frozen regime, output norms)
  and the :class:`BackboneAdapter` contract;
- :mod:`~raybench.backbones.factory`: :func:`build_backbone`, the adapter registry, the entry
  checks of study validation (:func:`backbone_problems`, :func:`check_weights`);
- :mod:`~raybench.backbones.convnet` / :mod:`~raybench.backbones.vit`: the two built-in
  adapters;
- :mod:`~raybench.backbones.weights`: strict loading of a weights file or state dict;
  :mod:`~raybench.backbones.hub`: hub weights, one download per node.
"""

from raybench.backbones.base import STRIDES, Backbone, BackboneAdapter, ModelInfo
from raybench.backbones.factory import (
    ADAPTERS,
    PRETRAINED_TAGS,
    adapter_for,
    backbone_problems,
    build_backbone,
    check_weights,
    model_info,
    register_adapter,
    resolve_timm_name,
)
from raybench.backbones.vit import PYRAMID_CHANNELS, SimpleFeaturePyramid, ViTBackbone
from raybench.backbones.weights import (
    CONTAINER_KEYS,
    IGNORED_FILE_KEYS,
    IGNORED_MISSING_KEYS,
    BackboneWeightsError,
    read_weights_file,
)

__all__ = [
    "ADAPTERS",
    "CONTAINER_KEYS",
    "IGNORED_FILE_KEYS",
    "IGNORED_MISSING_KEYS",
    "PRETRAINED_TAGS",
    "PYRAMID_CHANNELS",
    "STRIDES",
    "Backbone",
    "BackboneAdapter",
    "BackboneWeightsError",
    "ModelInfo",
    "SimpleFeaturePyramid",
    "ViTBackbone",
    "adapter_for",
    "backbone_problems",
    "build_backbone",
    "check_weights",
    "model_info",
    "read_weights_file",
    "register_adapter",
    "resolve_timm_name",
]
