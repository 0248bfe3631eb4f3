"""Load a YAML study file, validate all of it up front, and expand it into trials.

:func:`parse_study` reads the file's entries (paths expanded: :mod:`.paths`), checks each
section with every problem collected (:mod:`.checks` asks the packages that will act on an
entry), then expands the valid entries into trials (:mod:`.expand`).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from raybench.study.checks import (
    check_backbone,
    check_backbone_start,
    check_dataset_entry,
    check_dataset_start,
    check_metric,
)
from raybench.study.expand import expand_trials
from raybench.study.paths import expand_at
from raybench.study.schema import (
    Collector,
    Problem,
    StudyError,
    build,
    did_you_mean,
    join,
    name_problem,
    yaml_line_map,
)
from raybench.study.spec import (
    NAME,
    TASK_KINDS,
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


@dataclass
class _Entries:
    """The file's entries with their YAML index (entries that failed to parse are absent)."""

    datasets: list[tuple[int, DatasetSpec]]
    backbones: list[tuple[int, BackboneSpec]]
    rows: list[tuple[int, RowSpec]]


def _read_entries(top: StudyFile, base: Path, out: Collector) -> _Entries:
    """Entries with their paths expanded (env vars, relative to the study file); an entry
    whose path cannot be expanded (unset variable) is dropped, its problem reported."""
    datasets = []
    for i, d in enumerate(top.datasets or ()):
        root = expand_at(d.root, base, join(join("datasets", i), "root"), out) if d else None
        if root is not None:
            datasets.append((i, replace(d, root=root)))
    backbones = []
    for i, b in enumerate(top.backbones or ()):
        if b is None:
            continue
        weights = (
            expand_at(b.weights, base, join(join("backbones", i), "weights"), out) if b.weights else None
        )
        if weights is not None or not b.weights:
            backbones.append((i, replace(b, weights=weights)))
    rows = [(i, r) for i, r in enumerate(top.rows or ()) if r is not None]
    return _Entries(datasets, backbones, rows)


def _check_top_level(top: StudyFile, entries: _Entries, out: Collector) -> tuple[float, ...]:
    """Unique ids, seeds, fractions, recipe names, non-empty sections; the valid fractions."""
    _check_unique([(i, d.id) for i, d in entries.datasets], "datasets", "dataset id", out)
    _check_unique([(i, b.id) for i, b in entries.backbones], "backbones", "backbone id", out)
    _check_unique([(i, f"{r.backbone}/{r.regime}") for i, r in entries.rows], "rows", "row", out)
    _check_unique([(i, str(s)) for i, s in enumerate(top.seeds)], "seeds", "seed", out)
    _check_unique(
        [(i, f"{b.arch}-{b.pretraining}") for i, b in entries.backbones],
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
    if not entries.rows:
        out.add("rows", "needs at least one row (backbone x regime)")
    if not entries.datasets:
        out.add("datasets", "needs at least one dataset")
    return fractions


def _check_backbones(top: StudyFile, entries: _Entries, out: Collector, *, dry_run: bool) -> None:
    """Rows name known backbones; each backbone builds as a trial would, its weights exist."""
    ids = list(dict.fromkeys(b.id for _, b in entries.backbones))  # file order: stable hints
    for i, row in enumerate(top.rows or ()):
        if row is not None and row.backbone not in ids:
            out.add(
                join(join("rows", i), "backbone"),
                f"unknown backbone {row.backbone!r}{did_you_mean(row.backbone, ids)}; known: {sorted(ids)}",
            )
    for i, b in entries.backbones:
        path = join("backbones", i)
        before = len(out.problems)
        check_backbone(b, path, out)
        if len(out.problems) == before and not _has_problem(out, path):
            check_backbone_start(b, path, out, dry_run=dry_run)
        if b.weights and not dry_run and "://" not in b.weights and not Path(b.weights).is_file():
            out.add(join(path, "weights"), f"weights file not found: {b.weights}")
        if b.weights and not b.pretrained:
            out.add(
                join(path, "weights"), "a weights file is given but pretrained is false; set pretrained: true"
            )


def _check_recipes(top: StudyFile, arches: set[str], out: Collector) -> set[str]:
    """Each base recipe complete, ``by_backbone`` blocks partial and for known archs; the
    names of the recipes with a problem."""
    bad: set[str] = set()
    for name, raw in top.recipes.items():
        path = join("recipes", name)
        before = len(out.problems)
        if not isinstance(raw, Mapping):
            out.add(path, f"expected a mapping, got {raw!r}")
            bad.add(name)
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
            bad.add(name)
    return bad


def _check_dataset(
    top: StudyFile, d: DatasetSpec, path: str, formats: list[str] | None, out: Collector, *, dry_run: bool
) -> tuple[DatasetSpec, bool]:
    """One dataset entry: format, task and decoder, recipe, metric, overrides, then its root.

    Returns the entry with what its format's loader fills in (``options.task``), and whether
    the entry itself (all but the root) is sound, so that its trials can be expanded."""
    from raybench.models.registry import find_decoder, list_decoders

    before = len(out.problems)
    if formats is not None and d.format not in formats:
        out.add(
            join(path, "format"),
            f"unknown dataset format {d.format!r}{did_you_mean(d.format, formats)}; known: {sorted(formats)}",
        )
    elif formats is not None:
        # Options and task against the format's loader (may pass the task on as an option).
        d = check_dataset_entry(d, path, out)
    if d.task in TASK_KINDS and d.decoder not in list_decoders(d.task):
        out.add(
            join(path, "decoder"),
            f"decoder {d.decoder!r} does not serve task {d.task!r}; use one of {list_decoders(d.task)}",
        )
    if d.recipe not in top.recipes:
        out.add(
            join(path, "recipe"),
            f"unknown recipe {d.recipe!r}{did_you_mean(d.recipe, top.recipes)}; known: {sorted(top.recipes)}",
        )
    check_metric(d, path, out)
    build(RecipeSpec, d.overrides, join(path, "overrides"), out, partial=True)
    model_override = d.overrides.get("model") if isinstance(d.overrides, Mapping) else None
    decoder = find_decoder(d.decoder)
    if decoder is not None and isinstance(model_override, Mapping):
        build(decoder.options, model_override, join(join(path, "overrides"), "model"), out, partial=True)
    sound = len(out.problems) == before
    if not dry_run and d.synthetic is None and "://" not in d.root and not Path(d.root).exists():
        out.add(
            join(path, "root"),
            f"dataset root not found: {d.root} (see `raybench data fetch {d.format} DIR`; "
            "use --dry-run to validate without data)",
        )
    elif sound and formats is not None and not _has_problem(out, path):
        check_dataset_start(d, path, out, dry_run=dry_run)
    return d, sound


def _unique(problems: list[Problem]) -> list[Problem]:
    """Problems without repeats: the same merged-recipe problem would repeat for every backbone."""
    seen: set[tuple[str, str]] = set()
    return [p for p in problems if (p.path, p.message) not in seen and not seen.add((p.path, p.message))]


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
    top = build(StudyFile, data, "", out)
    if top is None:
        raise StudyError(out.problems, source)
    entries = _read_entries(top, base_dir or Path.cwd(), out)
    fractions = _check_top_level(top, entries, out)
    _check_backbones(top, entries, out, dry_run=dry_run)
    bad_recipes = _check_recipes(top, {b.arch for _, b in entries.backbones}, out)

    formats = known_formats()
    skip: set[str] = set()  # datasets whose trials would repeat a reported problem
    for k, (i, d) in enumerate(entries.datasets):
        d, sound = _check_dataset(top, d, join("datasets", i), formats, out, dry_run=dry_run)
        entries.datasets[k] = (i, d)
        if not sound or d.recipe in bad_recipes:
            skip.add(d.id)

    backbones = {b.id: b for _, b in entries.backbones}
    rows = [r for _, r in entries.rows]
    trials = expand_trials(top, entries.datasets, rows, backbones, fractions, skip, out)
    _check_unique(list(enumerate(t.name for t in trials)), "trials", "trial name", out)
    if out.problems:
        raise StudyError(_unique(out.problems), source)
    return Study(
        name=top.name,
        source=source,
        description=top.description,
        datasets=tuple(d for _, d in entries.datasets),
        backbones=tuple(b for _, b in entries.backbones),
        rows=tuple(rows),
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
        mark = exc.problem_mark if isinstance(exc, yaml.MarkedYAMLError) else None
        line = mark.line + 1 if mark else None
        raise StudyError([Problem("", f"invalid YAML: {exc}", line)], str(p)) from None
    return parse_study(data, str(p), base_dir=p.parent.resolve(), dry_run=dry_run, lines=yaml_line_map(text))


__all__ = ["Study", "StudyError", "known_formats", "load_study", "parse_study"]
