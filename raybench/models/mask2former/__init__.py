"""raybench's own PyTorch Mask2Former (semantic segmentation head), checked equal to transformers'.

Structure (see ``docs/mask2former.md``): :mod:`.pixel_decoder` (multi-scale deformable attention
encoder + FPN), :mod:`.transformer_decoder` (masked attention), :mod:`.matcher`, :mod:`.criterion`,
:mod:`.model` (config, head, target/inference helpers), :mod:`.hf_weights` (weight import).
"""

from .criterion import Mask2FormerCriterion
from .hf_weights import load_transformers_weights
from .matcher import HungarianMatcher
from .model import (
    Mask2FormerConfig,
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
    "Mask2FormerConfig",
    "Mask2FormerCriterion",
    "Mask2FormerHead",
    "MaskedTransformerDecoder",
    "load_transformers_weights",
    "multi_scale_deformable_attention",
    "semantic_inference",
    "semantic_to_targets",
    "semantic_to_targets_batch",
]
