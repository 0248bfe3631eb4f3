"""raybench's own PyTorch Mask2Former (semantic segmentation head), checked equal to transformers'.

Structure (see ``docs/mask2former.md``): :mod:`.pixel_decoder` (multi-scale deformable attention
encoder + FPN), :mod:`.transformer_decoder` (masked attention), :mod:`.matcher`, :mod:`.criterion`,
:mod:`.model` (head, target/inference helpers), :mod:`.hf_weights` (weight import).
The options and their defaults are declared once, in ``raybench.study.model_options.Mask2FormerOptions``;
the modules here take them as keyword-only arguments without defaults
(``Mask2FormerHead.from_options(options, num_classes=K, in_channels=...)``).
"""

from .criterion import Mask2FormerCriterion
from .hf_weights import load_transformers_weights
from .matcher import HungarianMatcher
from .model import (
    Mask2FormerHead,
    semantic_inference,
    semantic_to_targets,
    semantic_to_targets_batch,
)
from .ms_deform_attn import multi_scale_deformable_attention
from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import MaskedTransformerDecoder

__all__ = [
    "HungarianMatcher",
    "MSDeformAttnPixelDecoder",
    "Mask2FormerCriterion",
    "Mask2FormerHead",
    "MaskedTransformerDecoder",
    "load_transformers_weights",
    "multi_scale_deformable_attention",
    "semantic_inference",
    "semantic_to_targets",
    "semantic_to_targets_batch",
]
