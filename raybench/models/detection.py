"""torchvision Faster R-CNN / Mask R-CNN on any raybench :class:`~raybench.backbones.Backbone`.

The detectors are torchvision's own (RPN, ROI heads, losses, post-processing); raybench
only supplies the backbone: the timm feature extractor (strides 4/8/16/32) under
torchvision's ``FeaturePyramidNetwork`` with ``LastLevelMaxPool`` — five levels P2..P6,
the Detectron2 R-CNN FPN layout — and the configuration from the study:

- normalisation: the backbone's own pretraining mean/std, applied by torchvision's
  ``GeneralizedRCNNTransform`` (inputs are float images in [0, 1]);
- sizes: the transform resizes — training picks one of ``input.train_short_edge`` per
  image (long edge <= ``train_max_size``), evaluation uses ``test_short_edge`` /
  ``test_max_size`` — and pads batches to ``size_divisibility`` with 0.0 *after*
  normalising (= the mean colour, as Detectron2's ``ImageList.from_tensors``). It resizes
  the normalised float image bilinearly without antialiasing (Detectron2: PIL bilinear on
  the uint8 image, antialiased when shrinking, then normalises). The data pipeline of the
  detection tasks therefore only flips: resizing there as well would resample twice.
  Predictions come back in the input image's pixel frame (torchvision's post-processing).
- anchors: one size per level (``anchor_sizes``), every level with ``aspect_ratios``;
- RPN / ROI sampling and test-time limits from :class:`~raybench.study.model_options.DetectorOptions`;
- classes: the dataset's K foreground classes + background (index 0);
- heads: torchvision's defaults (RPN: one 3x3 conv; box: two 1024-d FC; mask: four 3x3
  convs + deconv), except that the mask head is as wide as the FPN (``fpn_channels``,
  256 by default, as Detectron2) so that a narrow smoke-test FPN gets a narrow mask head.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from raybench.backbones import Backbone
from raybench.models.registry import find_decoder, list_decoders, register_decoder
from raybench.study.model_options import DetectorOptions
from raybench.study.spec import InputSpec

#: FPN levels seen by the RPN: P2..P5 from the backbone + P6 from max-pooling P5.
NUM_LEVELS = 5
#: Task kinds whose decoders are detectors built by :func:`build_detector`.
DETECTION_TASKS: tuple[str, ...] = ("detection", "instance")


class FPNBackbone(nn.Module):
    """A raybench backbone followed by an FPN: what torchvision's detectors call ``backbone``.

    ``body`` is the raybench :class:`Backbone` (frozen or not); its output maps become FPN
    levels ``"0".."3"`` plus ``"pool"``.
    """

    def __init__(self, body: Backbone, out_channels: int = 256) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(images)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


class DetectorTransform(GeneralizedRCNNTransform):
    """torchvision's transform with separate train and test sizes (it has one ``max_size``)."""

    def __init__(
        self,
        train_sizes: tuple[int, ...],
        train_max_size: int,
        test_size: int,
        test_max_size: int,
        image_mean: list[float],
        image_std: list[float],
        size_divisible: int = 32,
    ) -> None:
        super().__init__(train_sizes, train_max_size, image_mean, image_std, size_divisible=size_divisible)
        self.train_sizes, self.train_max_size = tuple(train_sizes), int(train_max_size)
        self.test_size, self.test_max_size = int(test_size), int(test_max_size)

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        if self.training:
            self.min_size, self.max_size = self.train_sizes, self.train_max_size
        else:
            self.min_size, self.max_size = (self.test_size,), self.test_max_size
        return super().resize(image, target)


def build_detector(
    decoder: str,
    backbone: Backbone,
    num_classes: int,
    options: DetectorOptions,
    input_spec: InputSpec,
) -> GeneralizedRCNN:
    """The registered detector ``decoder`` (``faster_rcnn``, ``mask_rcnn``) over ``backbone``.

    ``num_classes`` is the dataset's number of foreground classes K; the heads get K + 1.
    """
    entry = find_decoder(decoder)
    if entry is None or entry.task not in DETECTION_TASKS:
        known = tuple(d for task in DETECTION_TASKS for d in list_decoders(task))
        raise ValueError(f"unknown detector {decoder!r}; expected one of {known}")
    return entry.build(backbone, num_classes, options, input_spec)


@register_decoder("faster_rcnn", task="detection", options=DetectorOptions)
def faster_rcnn(
    backbone: Backbone, num_classes: int, options: DetectorOptions, input_spec: InputSpec
) -> GeneralizedRCNN:
    """torchvision's Faster R-CNN over ``backbone`` + FPN."""
    return _rcnn(backbone, num_classes, options, input_spec, masks=False)


@register_decoder("mask_rcnn", task="instance", options=DetectorOptions)
def mask_rcnn(
    backbone: Backbone, num_classes: int, options: DetectorOptions, input_spec: InputSpec
) -> GeneralizedRCNN:
    """torchvision's Mask R-CNN over ``backbone`` + FPN, its mask head as wide as the FPN."""
    return _rcnn(backbone, num_classes, options, input_spec, masks=True)


def _rcnn(
    backbone: Backbone, num_classes: int, options: DetectorOptions, input_spec: InputSpec, *, masks: bool
) -> GeneralizedRCNN:
    if len(options.anchor_sizes) != NUM_LEVELS:
        raise ValueError(
            f"anchor_sizes needs one size per FPN level ({NUM_LEVELS}: P2..P6), got {options.anchor_sizes}"
        )
    anchors = AnchorGenerator(
        sizes=tuple((int(s),) for s in options.anchor_sizes),
        aspect_ratios=(tuple(float(r) for r in options.aspect_ratios),) * NUM_LEVELS,
    )
    kwargs: dict[str, Any] = {
        "num_classes": num_classes + 1,
        "rpn_anchor_generator": anchors,
        "rpn_batch_size_per_image": options.rpn_batch_size_per_image,
        "rpn_pre_nms_top_n_train": options.rpn_pre_nms_top_n_train,
        "rpn_post_nms_top_n_train": options.rpn_post_nms_top_n_train,
        "rpn_pre_nms_top_n_test": options.rpn_pre_nms_top_n_test,
        "rpn_post_nms_top_n_test": options.rpn_post_nms_top_n_test,
        "box_batch_size_per_image": options.box_batch_size_per_image,
        "box_detections_per_img": options.box_detections_per_img,
        "box_score_thresh": options.box_score_thresh,
    }
    fpn_backbone = FPNBackbone(backbone, options.fpn_channels)
    if not masks:
        model = FasterRCNN(fpn_backbone, **kwargs)
    else:
        model = MaskRCNN(fpn_backbone, **kwargs)
        # Mask head: 4 convs + deconv, as wide as the FPN (256 = Detectron2's CONV_DIM in
        # the paper recipe; torchvision would fix 256 even for a narrow smoke-test FPN).
        width = options.fpn_channels
        if width != 256:
            model.roi_heads.mask_head = MaskRCNNHeads(width, (width,) * 4, 1)
            model.roi_heads.mask_predictor = MaskRCNNPredictor(width, width, num_classes + 1)
    mean = (backbone.mean.flatten() / 255.0).tolist()
    std = (backbone.std.flatten() / 255.0).tolist()
    model.transform = DetectorTransform(
        tuple(input_spec.train_short_edge),
        input_spec.train_max_size,
        input_spec.test_short_edge,
        input_spec.test_max_size,
        mean,
        std,
        size_divisible=input_spec.size_divisibility,
    )
    return model


def detector_backbone(model: GeneralizedRCNN) -> Backbone:
    """The raybench backbone inside a detector built by :func:`build_detector`."""
    return model.backbone.body
