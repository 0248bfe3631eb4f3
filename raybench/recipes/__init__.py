"""Recipes: optimizer + parameter groups, LR schedules and gradient clipping from the study's specs.

Learning rates are defined for the trial's *global* batch; nothing here looks at the
number of workers or the per-worker batch.
"""

from raybench.recipes.clip import clip_gradients
from raybench.recipes.optim import (
    LayerIds,
    build_optimizer,
    layer_ids,
    param_groups,
    weight_decay_kind,
)
from raybench.recipes.schedules import build_scheduler, lr_factor

__all__ = [
    "LayerIds",
    "build_optimizer",
    "build_scheduler",
    "clip_gradients",
    "layer_ids",
    "lr_factor",
    "param_groups",
    "weight_decay_kind",
]
