"""Load a YAML study file, validate all of it up front, and expand it into trials."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from raybench.study.checks import (
    check_backbone,
    check_backbone_start,
    check_dataset,
    check_dataset_start,
    check_layer_decay,
    check_metric,
)
from raybench.study.schema import (
    Collector,
    Problem,
    StudyError,
    build,
    deep_merge,
    did_you_mean,
    join,
    name_problem,
    yaml_line_map,
)
from raybench.study.spec import (
    DECODERS,
    MODEL_OPTIONS,
    NAME,
    REGIMES,
    BackboneSpec,
    DatasetSpec,
    RecipeSpec,
    RowSpec,
    ScalingSpec,
    TrialSpec,
)


@dataclass(frozen=True)
class StudyFile:
    """The top level of a study file (recipes stay raw until merged per trial)."""

    name: str = field(metadata=NAME)
    datasets: tuple[DatasetSpec, ...]
    backbones: tuple[BackboneSpec, ...]
    rows: tuple[RowSpec, ...]
    recipes: dict[str, dict[str, Any]]
    seeds: tuple[int, ...] = (42,)
    #: The label-efficiency axis: each trial trains on this share of the training split.
    train_fractions: tuple[float, ...] = (1.0,)
    scaling: ScalingSpec = field(default_factory=ScalingSpec)
    description: str = ""


@dataclass(frozen=True)
class Study:
    """A validated study: its trials are a pure function of the file."""

    name: str
    source: str
    description: str
    datasets: tuple[DatasetSpec, ...]
    backbones: tuple[BackboneSpec, ...]
    rows: tuple[RowSpec, ...]
    seeds: tuple[int, ...]
    scaling: ScalingSpec
    trials: tuple[TrialSpec, ...]
    train_fractions: tuple[float, ...] = (1.0,)

    def select(self, patterns: str | list[str] | None) -> list[TrialSpec]:
        """Trials whose name matches any glob pattern (comma-separated allowed)."""
        if patterns is None:
            return list(self.trials)
        given = patterns
        if isinstance(patterns, str):
            patterns = patterns.split(",")
        patterns = [p.strip() for p in patterns if p.strip()]
        if not patterns:
            raise StudyError(
                [Problem("--only", f"{given!r} names no trial pattern; give glob patterns like 'gdxray-*'")],
                self.source,
            )
        chosen = [t for t in self.trials if any(fnmatch.fnmatchcase(t.name, p) for p in patterns)]
        if not chosen:
            names = [t.name for t in self.trials]
            hint = did_you_mean(patterns[0], names)
            raise StudyError([Problem("trials", f"no trial matches {patterns}{hint}")], self.source)
        return chosen

    def trial(self, name: str) -> TrialSpec:
        """The trial called ``name`` (exact), with a did-you-mean error otherwise."""
        for t in self.trials:
            if t.name == name:
                return t
        hint = did_you_mean(name, [t.name for t in self.trials])
        raise StudyError([Problem("trials", f"no trial named {name!r}{hint}")], self.source)


#: Seeds reach numpy's SeedSequence / default_rng (non-negative) and torch.manual_seed.
MAX_SEED = 2**63 - 1

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")

_BARE_ENV = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


class UnsetVariableError(ValueError):
    """A ``${VAR}`` in a path names a variable that is not set and gives no default."""

    def __init__(self, variable: str, value: str) -> None:
        super().__init__(
            f"environment variable {variable} is not set (in {value!r}); set it, or give a "
            f"default: ${{{variable}:-/path}}"
        )
        self.variable = variable


def expand_path(value: str, base: Path) -> str:
    """``${VAR:-default}`` expansion, ``~``, and paths relative to the study file's folder.

    URIs (``s3://``, ``gs://``, ``http(s)://``) are kept as they are. An unset ``${VAR}``
    without a default raises :class:`UnsetVariableError`: expanding it to "" would turn
    ``${DATA}/gdxray`` into ``/gdxray`` (and a synthetic dataset would be written there).
    """

    bare = _BARE_ENV.search(value)
    if bare:
        raise ValueError(
            f"${bare.group(1)} in {value!r} is not expanded (only ${{VAR}} is); write ${{{bare.group(1)}}}"
        )

    def sub(m: re.Match[str]) -> str:
        if m.group(1) in os.environ:
            return os.environ[m.group(1)]
        if m.group(2) is None:
            raise UnsetVariableError(m.group(1), value)
        return m.group(3)

    expanded = os.path.expanduser(_ENV.sub(sub, value))
    if not expanded.strip():
        raise ValueError(f"path {value!r} is empty once expanded")
    if "://" in expanded or os.path.isabs(expanded):
        return expanded
    return str((base / expanded).resolve())


def _expand_at(value: str, base: Path, path: str, out: Collector) -> str | None:
    """:func:`expand_path`, a problem at ``path`` (None) when it cannot be expanded."""
    try:
        return expand_path(value, base)
    except ValueError as exc:
        out.add(path, str(exc))
        return None


def known_formats() -> list[str] | None:
    """Dataset formats the data registry knows (None if the registry cannot be imported)."""
    try:
        from raybench.data import list_datasets
    except ImportError:
        return None
    return list(list_datasets())


def _check_unique(items: list[tuple[int, str]], path: str, what: str, out: Collector) -> None:
    """``items``: (YAML index, key) -- entries that failed to parse are absent, so the index is
    carried along rather than recounted."""
    seen: set[str] = set()
    for i, item in items:
        if item in seen:
            out.add(join(path, i), f"duplicate {what} {item!r}")
        seen.add(item)


def _check_fractions(values: tuple[float, ...], out: Collector) -> tuple[float, ...]:
    """``train_fractions``: numbers in (0, 1], no repeats, at least one; the valid ones."""
    if not values:
        out.add("train_fractions", "needs at least one fraction (1.0 = the whole training split)")
    valid: list[float] = []
    for i, f in enumerate(values):
        if not isinstance(f, float):
            continue  # reported by the schema (not a number)
        if not 0.0 < f <= 1.0:
            out.add(
                join("train_fractions", i),
                f"a training fraction must be in (0, 1] (share of the training split), got {f!r}",
            )
        elif f in valid:
            out.add(join("train_fractions", i), f"duplicate training fraction {f!r}")
        else:
            valid.append(f)
    return tuple(valid)


def _has_problem(out: Collector, path: str) -> bool:
    """Was a problem found at ``path`` or below it (then checks that build on it are skipped)?"""
    return any(p.path == path or p.path.startswith((f"{path}.", f"{path}[")) for p in out.problems)


def _merged_recipe(raw_recipes: Mapping[str, Any], dataset: DatasetSpec, arch: str) -> dict[str, Any]:
    base = dict(raw_recipes[dataset.recipe])
    by_backbone = base.pop("by_backbone", {}) or {}
    merged = deep_merge(base, by_backbone.get(arch, {}) or {})
    return deep_merge(merged, dataset.overrides)


def parse_study(
    data: Any,
    source: str = "<study>",
    *,
    base_dir: Path | None = None,
    dry_run: bool = False,
    lines: Mapping[str, int] | None = None,
) -> Study:
    """Validate plain study data (as loaded from YAML) and expand it into trials."""
    out = Collector(lines)
    base = base_dir or Path.cwd()
    top = build(StudyFile, data, "", out)
    if top is None:
        raise StudyError(out.problems, source)

    # Paths: expand env vars and make them absolute relative to the study file.
    # Entries that failed to build are None (already reported); keep indices for paths.
    # A path that cannot be expanded (unset variable) drops its entry (reported).
    datasets_at = []
    for i, d in enumerate(top.datasets or ()):
        root = _expand_at(d.root, base, join(join("datasets", i), "root"), out) if d else None
        if root is not None:
            datasets_at.append((i, replace(d, root=root)))
    datasets = tuple(d for _, d in datasets_at)
    # (YAML index, backbone): a backbone that failed to parse is dropped, its index is kept.
    backbones_at = []
    for i, b in enumerate(top.backbones or ()):
        if b is None:
            continue
        weights = (
            _expand_at(b.weights, base, join(join("backbones", i), "weights"), out) if b.weights else None
        )
        if weights is not None or not b.weights:
            backbones_at.append((i, replace(b, weights=weights)))
    backbones = tuple(b for _, b in backbones_at)
    rows_at = [(i, r) for i, r in enumerate(top.rows or ()) if r is not None]
    rows = tuple(r for _, r in rows_at)

    _check_unique([(i, d.id) for i, d in datasets_at], "datasets", "dataset id", out)
    _check_unique([(i, b.id) for i, b in backbones_at], "backbones", "backbone id", out)
    _check_unique([(i, f"{r.backbone}/{r.regime}") for i, r in rows_at], "rows", "row", out)
    _check_unique([(i, str(s)) for i, s in enumerate(top.seeds)], "seeds", "seed", out)
    _check_unique(
        [(i, f"{b.arch}-{b.pretraining}") for i, b in backbones_at],
        "backbones",
        "backbone arch+pretraining (trial names would collide):",
        out,
    )
    for i, seed in enumerate(top.seeds):
        if isinstance(seed, int) and not 0 <= seed <= MAX_SEED:
            out.add(join("seeds", i), f"a seed must be an integer in [0, 2**63 - 1], got {seed}")
    fractions = _check_fractions(top.train_fractions, out)
    for name in top.recipes:
        why = name_problem(name)
        if why:
            out.add(join("recipes", name), f"recipe name {why}")
    if not top.seeds:
        out.add("seeds", "needs at least one seed")
    if not rows:
        out.add("rows", "needs at least one row (backbone x regime)")
    if not datasets:
        out.add("datasets", "needs at least one dataset")

    backbone_ids = {b.id: b for b in backbones}
    arches = {b.arch for b in backbones}
    for i, row in enumerate(top.rows or ()):
        if row is not None and row.backbone not in backbone_ids:
            out.add(
                join(join("rows", i), "backbone"),
                f"unknown backbone {row.backbone!r}{did_you_mean(row.backbone, backbone_ids)}"
                f"; known: {sorted(backbone_ids)}",
            )
    for i, b in backbones_at:
        before = len(out.problems)
        check_backbone(b, join("backbones", i), out)
        if len(out.problems) == before and not _has_problem(out, join("backbones", i)):
            check_backbone_start(b, join("backbones", i), out, dry_run=dry_run)
        if b.weights and not dry_run and "://" not in b.weights and not Path(b.weights).is_file():
            out.add(join(join("backbones", i), "weights"), f"weights file not found: {b.weights}")
        if b.weights and not b.pretrained:
            out.add(
                join(join("backbones", i), "weights"),
                "a weights file is given but pretrained is false; set pretrained: true",
            )

    # Recipes: each base recipe complete; overrides only name keys that exist.
    bad_recipes: set[str] = set()
    for name, raw in top.recipes.items():
        path = join("recipes", name)
        before = len(out.problems)
        if not isinstance(raw, Mapping):
            out.add(path, f"expected a mapping, got {raw!r}")
            bad_recipes.add(name)
            continue
        build(RecipeSpec, raw, path, out)
        by_backbone = raw.get("by_backbone") or {}
        for arch, partial in by_backbone.items() if isinstance(by_backbone, Mapping) else ():
            if arch not in arches:
                out.add(
                    join(join(path, "by_backbone"), arch),
                    f"unknown backbone arch{did_you_mean(arch, arches)}; known: {sorted(arches)}",
                )
            build(RecipeSpec, partial, join(join(path, "by_backbone"), arch), out, partial=True)
        if len(out.problems) > before:
            bad_recipes.add(name)

    formats = known_formats()
    for k, (i, d) in enumerate(datasets_at):
        path = join("datasets", i)
        before = len(out.problems)
        if formats is not None and d.format not in formats:
            out.add(
                join(path, "format"),
                f"unknown dataset format {d.format!r}{did_you_mean(d.format, formats)}; "
                f"known: {sorted(formats)}",
            )
        elif formats is not None:
            # Options and task against the format's loader (may pass the task on as an option).
            d = check_dataset(d, path, out)
            datasets_at[k] = (i, d)
        if d.task in DECODERS and d.decoder not in DECODERS[d.task]:
            out.add(
                join(path, "decoder"),
                f"decoder {d.decoder!r} does not serve task {d.task!r}; use one of {DECODERS[d.task]}",
            )
        if d.recipe not in top.recipes:
            out.add(
                join(path, "recipe"),
                f"unknown recipe {d.recipe!r}{did_you_mean(d.recipe, top.recipes)}; "
                f"known: {sorted(top.recipes)}",
            )
        check_metric(d, path, out)
        build(RecipeSpec, d.overrides, join(path, "overrides"), out, partial=True)
        model_override = d.overrides.get("model") if isinstance(d.overrides, Mapping) else None
        if d.decoder in MODEL_OPTIONS and isinstance(model_override, Mapping):
            build(
                MODEL_OPTIONS[d.decoder],
                model_override,
                join(join(path, "overrides"), "model"),
                out,
                partial=True,
            )
        if len(out.problems) > before:
            bad_recipes.add(f"dataset:{d.id}")
        if not dry_run and d.synthetic is None and "://" not in d.root and not Path(d.root).exists():
            out.add(
                join(path, "root"),
                f"dataset root not found: {d.root} (see `raybench data fetch {d.format} DIR`; "
                "use --dry-run to validate without data)",
            )
        elif len(out.problems) == before and formats is not None and not _has_problem(out, path):
            check_dataset_start(d, path, out, dry_run=dry_run)

    datasets = tuple(d for _, d in datasets_at)

    # Expand: rows x datasets x seeds, recipe merged per (dataset, backbone arch).
    trials: list[TrialSpec] = []
    recipe_cache: dict[tuple[str, str], RecipeSpec | None] = {}
    for d_i, d in datasets_at:
        if (
            d.recipe in bad_recipes
            or f"dataset:{d.id}" in bad_recipes
            or not isinstance(top.recipes.get(d.recipe), Mapping)
        ):
            continue  # already reported
        for row in rows:
            if row.backbone not in backbone_ids:
                continue  # already reported
            b = backbone_ids[row.backbone]
            key = (d.id, b.arch)
            if key not in recipe_cache:
                path = f"datasets[{d_i}] (recipe {d.recipe!r} for {b.arch})"
                merged = _merged_recipe(top.recipes, d, b.arch)
                recipe = build(RecipeSpec, merged, path, out)
                if recipe is not None and recipe.optimizer.layer_decay not in (None, 1.0):
                    check_layer_decay(b, join(path, "optimizer.layer_decay"), out)
                if recipe is not None and d.decoder in MODEL_OPTIONS:
                    build(MODEL_OPTIONS[d.decoder], recipe.model, join(path, "model"), out)
                    if recipe.batch_size % top.scaling.workers:
                        out.add(
                            join(path, "batch_size"),
                            f"global batch {recipe.batch_size} is not divisible by "
                            f"scaling.workers={top.scaling.workers}",
                        )
                    recipe = replace(recipe, by_backbone={})
                recipe_cache[key] = recipe
            recipe = recipe_cache[key]
            if recipe is None:
                continue
            for seed in top.seeds:
                for fraction in fractions:
                    trials.append(
                        TrialSpec(
                            study=top.name,
                            dataset=d,
                            backbone=b,
                            regime=row.regime,
                            seed=seed,
                            recipe=recipe,
                            scaling=top.scaling,
                            train_fraction=fraction,
                        )
                    )
    _check_unique(list(enumerate(t.name for t in trials)), "trials", "trial name", out)
    if out.problems:
        # Deduplicate: the same merged-recipe problem would repeat for every backbone.
        seen: set[tuple[str, str]] = set()
        unique = [
            p for p in out.problems if (p.path, p.message) not in seen and not seen.add((p.path, p.message))
        ]
        raise StudyError(unique, source)
    return Study(
        name=top.name,
        source=source,
        description=top.description,
        datasets=datasets,
        backbones=backbones,
        rows=rows,
        seeds=top.seeds,
        scaling=top.scaling,
        trials=tuple(trials),
        train_fractions=fractions,
    )


def load_study(path: str | os.PathLike[str], *, dry_run: bool = False) -> Study:
    """Read and validate a study file; raise :class:`StudyError` listing every problem."""
    p = Path(path)
    if not p.is_file():
        raise StudyError([Problem("", f"study file not found: {p}")], str(p))
    text = p.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise StudyError([Problem("", f"invalid YAML: {exc}", line)], str(p)) from None
    return parse_study(data, str(p), base_dir=p.parent.resolve(), dry_run=dry_run, lines=yaml_line_map(text))


__all__ = ["Study", "StudyError", "load_study", "parse_study", "REGIMES"]
