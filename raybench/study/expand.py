"""Expansion of a checked study into its trials: datasets x rows x seeds x training fractions.

A trial's recipe is merged per (dataset, backbone arch) -- the dataset's base recipe, then its
``by_backbone[arch]`` block, then the dataset's ``overrides`` -- and each merged recipe is built
and checked once: the decoder's ``model`` options, layer decay against the backbone, and a
global batch that splits evenly over the workers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from raybench.study.checks import check_layer_decay
from raybench.study.schema import Collector, build, deep_merge, join
from raybench.study.spec import BackboneSpec, DatasetSpec, RecipeSpec, RowSpec, TrialSpec

if TYPE_CHECKING:
    from raybench.study.loader import StudyFile


def merged_recipe(raw_recipes: Mapping[str, Any], dataset: DatasetSpec, arch: str) -> dict[str, Any]:
    """The plain recipe of ``dataset`` for backbone arch ``arch`` (base <- by_backbone <- overrides)."""
    base = dict(raw_recipes[dataset.recipe])
    by_backbone = base.pop("by_backbone", {}) or {}
    merged = deep_merge(base, by_backbone.get(arch, {}) or {})
    return deep_merge(merged, dataset.overrides)


def _trial_recipe(
    top: StudyFile, index: int, dataset: DatasetSpec, backbone: BackboneSpec, out: Collector
) -> RecipeSpec | None:
    """The merged, checked recipe of ``dataset`` on ``backbone`` (None if it does not build)."""
    from raybench.models.registry import get_decoder

    path = f"datasets[{index}] (recipe {dataset.recipe!r} for {backbone.arch})"
    recipe = build(RecipeSpec, merged_recipe(top.recipes, dataset, backbone.arch), path, out)
    if recipe is None:
        return None
    if recipe.optimizer.layer_decay not in (None, 1.0):
        check_layer_decay(backbone, join(path, "optimizer.layer_decay"), out)
    build(get_decoder(dataset.decoder).options, recipe.model, join(path, "model"), out)
    if recipe.batch_size % top.scaling.workers:
        out.add(
            join(path, "batch_size"),
            f"global batch {recipe.batch_size} is not divisible by scaling.workers={top.scaling.workers}",
        )
    return replace(recipe, by_backbone={})


def expand_trials(
    top: StudyFile,
    datasets_at: Sequence[tuple[int, DatasetSpec]],
    rows: Sequence[RowSpec],
    backbones: Mapping[str, BackboneSpec],
    fractions: Sequence[float],
    skip_datasets: set[str],
    out: Collector,
) -> list[TrialSpec]:
    """Every trial of the study, in a stable order (datasets, rows, seeds, fractions).

    ``datasets_at``: (YAML index, dataset) of the datasets that passed their checks;
    ``skip_datasets``: ids of those whose recipe is already reported as broken. Rows naming
    an unknown backbone are skipped (reported by the loader).
    """
    trials: list[TrialSpec] = []
    recipes: dict[tuple[str, str], RecipeSpec | None] = {}
    for index, dataset in datasets_at:
        if dataset.id in skip_datasets or not isinstance(top.recipes.get(dataset.recipe), Mapping):
            continue  # already reported
        for row in rows:
            backbone = backbones.get(row.backbone)
            if backbone is None:
                continue  # already reported
            key = (dataset.id, backbone.arch)
            if key not in recipes:
                recipes[key] = _trial_recipe(top, index, dataset, backbone, out)
            recipe = recipes[key]
            if recipe is None:
                continue
            trials.extend(
                TrialSpec(
                    study=top.name,
                    dataset=dataset,
                    backbone=backbone,
                    regime=row.regime,
                    seed=seed,
                    recipe=recipe,
                    scaling=top.scaling,
                    train_fraction=fraction,
                )
                for seed in top.seeds
                for fraction in fractions
            )
    return trials


__all__ = ["expand_trials", "merged_recipe"]
