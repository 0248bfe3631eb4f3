"""Each decoder family's typed options: the one declaration of their defaults.

A recipe's ``model:`` mapping is read into one of these (``RecipeSpec.model_options``); the
builders pass every field on by name to keyword-only constructors that have no defaults of
their own (the official Mask2Former's pattern: defaults in one config, ``__init__(*, ...)``).
Changing a default here therefore changes every model built from it. Which decoder takes
which class is declared where the decoder is registered (``raybench.models.registry``).
No torch imports: the study is validated before any model code runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DetectorOptions:
    """torchvision Faster/Mask R-CNN options (Detectron2 defaults unless said)."""

    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    fpn_channels: int = field(default=256, metadata={"gt": 0})
    rpn_batch_size_per_image: int = field(default=256, metadata={"gt": 0})
    rpn_pre_nms_top_n_train: int = field(default=2000, metadata={"gt": 0})
    rpn_post_nms_top_n_train: int = field(default=1000, metadata={"gt": 0})
    rpn_pre_nms_top_n_test: int = field(default=1000, metadata={"gt": 0})
    rpn_post_nms_top_n_test: int = field(default=1000, metadata={"gt": 0})
    box_batch_size_per_image: int = field(default=512, metadata={"gt": 0})
    box_detections_per_img: int = field(default=100, metadata={"gt": 0})
    box_score_thresh: float = field(default=0.05, metadata={"ge": 0, "le": 1})

    def __post_init__(self) -> None:
        # What the detector builder refuses: one anchor size per FPN level (P2..P6).
        if len(self.anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes needs 5 sizes (FPN levels P2..P6), got {list(self.anchor_sizes)}")
        if not self.aspect_ratios or min(self.aspect_ratios) <= 0:
            raise ValueError(f"aspect_ratios must be positive numbers, got {list(self.aspect_ratios)}")
        if min(self.anchor_sizes) <= 0:
            raise ValueError(f"anchor_sizes must be positive, got {list(self.anchor_sizes)}")


@dataclass(frozen=True)
class Mask2FormerOptions:
    """Mask2Former head sizes and loss weights: the official semantic-segmentation config.

    Field names are the keyword arguments of ``Mask2FormerHead`` (no renaming on the way).
    ``dec_layers`` counts predictions as the official ``DEC_LAYERS: 10`` does: one from the
    learnt queries plus one after each of ``dec_layers - 1`` masked-attention layers.
    ``class_cost`` is the matcher's class weight (official 2.0; transformers releases before 5
    hard-code 1.0).
    """

    num_queries: int = field(default=100, metadata={"gt": 0})
    hidden_dim: int = field(default=256, metadata={"gt": 0})
    conv_dim: int = field(default=256, metadata={"gt": 0})
    enc_layers: int = field(default=6, metadata={"ge": 0})
    dec_layers: int = field(default=10, metadata={"gt": 0})
    mask_dim: int = field(default=256, metadata={"gt": 0})
    nheads: int = field(default=8, metadata={"gt": 0})
    dim_feedforward: int = field(default=2048, metadata={"gt": 0})
    enc_dim_feedforward: int = field(default=1024, metadata={"gt": 0})
    n_points: int = field(default=4, metadata={"gt": 0})
    num_points: int = field(default=12544, metadata={"gt": 0})
    oversample_ratio: float = field(default=3.0, metadata={"ge": 1})
    importance_sample_ratio: float = field(default=0.75, metadata={"ge": 0, "le": 1})
    class_weight: float = field(default=2.0, metadata={"ge": 0})
    mask_weight: float = field(default=5.0, metadata={"ge": 0})
    dice_weight: float = field(default=5.0, metadata={"ge": 0})
    no_object_weight: float = field(default=0.1, metadata={"ge": 0})
    class_cost: float = field(default=2.0, metadata={"ge": 0})

    def __post_init__(self) -> None:
        # What the attention layers refuse: the width must split over the heads.
        for name in ("conv_dim", "hidden_dim"):
            if getattr(self, name) % self.nheads:
                raise ValueError(f"{name} {getattr(self, name)} must be divisible by nheads {self.nheads}")


@dataclass(frozen=True)
class SmpOptions:
    """segmentation-models-pytorch decoder options (UPerNet / FPN)."""

    decoder_channels: int = field(default=256, metadata={"gt": 0})
    dropout: float = field(default=0.0, metadata={"ge": 0, "lt": 1})


__all__ = ["DetectorOptions", "Mask2FormerOptions", "SmpOptions"]
