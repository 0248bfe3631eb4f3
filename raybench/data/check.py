"""``raybench data check``: validate a dataset on disk and summarise it before a long run.

Decodes every image and target of both splits once (no transforms) and reports images per
split, instances and pixels per class, image sizes, and the problems found. Unreadable
images are skipped and counted (training skips them too, ``skip_unreadable=True``);
a split that cannot be built, a target that cannot be decoded or a split with no readable
image is *fatal* (training would crash on it) and makes the check fail.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from raybench.data.errors import DatasetFormatError
from raybench.data.options import SPLITS
from raybench.data.registry import build_dataset, dataset_class

MAX_LISTED = 10


@dataclass
class ClassStats:
    """Per-class counts: images containing it, instances (boxes), pixels (masks)."""

    images: int = 0
    instances: int = 0
    pixels: int = 0


@dataclass
class SplitReport:
    split: str
    images: int = 0
    indexed: int = 0
    checked: int = 0
    readable: int = 0
    unreadable: int = 0
    unreadable_files: list[str] = field(default_factory=list)
    classes: dict[str, ClassStats] = field(default_factory=dict)
    background_pixels: int = 0
    ignore_pixels: int = 0
    empty_images: int = 0
    width: dict[str, float] = field(default_factory=dict)
    height: dict[str, float] = field(default_factory=dict)
    distinct_sizes: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class CheckReport:
    name: str
    root: str
    options: dict[str, Any]
    task: str | None = None
    class_names: list[str] = field(default_factory=list)
    splits: dict[str, SplitReport] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)
    #: Table 1's {train, val} counts for the paper's datasets (empty for generic formats).
    paper_sizes: dict[str, int] = field(default_factory=dict)
    #: Per split: every value of the class attribute with objects / images / class (RarePlanes),
    #: also when the split could not be built because of a value outside the class map.
    class_values: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: How many images per split were to be decoded (None = all).
    max_images: int | None = None

    @property
    def ok(self) -> bool:
        return not self.fatal

    def found_sizes(self) -> dict[str, int | None]:
        """Images per split in the index (what a trial trains / evaluates on)."""
        return {s: (self.splits[s].indexed if s in self.splits else None) for s in SPLITS}

    def paper_mismatch(self) -> bool:
        found = self.found_sizes()
        return bool(self.paper_sizes) and any(found[s] != self.paper_sizes[s] for s in SPLITS)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["found_sizes"] = self.found_sizes()
        out["paper_mismatch"] = self.paper_mismatch()
        return out


def _size_stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": min(values), "max": max(values), "mean": round(sum(values) / len(values), 1)}


def _check_split(ds: Any, rep: SplitReport, report: CheckReport, max_images: int | None) -> None:
    k = ds.num_classes
    names = list(ds.class_names)
    rep.classes = {n: ClassStats() for n in names}
    rep.images = len(ds)
    rep.indexed = len(ds)
    widths: list[int] = []
    heights: list[int] = []
    n = len(ds) if max_images is None else min(len(ds), max_images)
    for i in range(n):
        info = ds.image_info(i)
        rep.checked += 1
        try:
            image = ds.load_image(i)
        except DatasetFormatError as exc:
            rep.unreadable += 1
            if len(rep.unreadable_files) < MAX_LISTED:
                rep.unreadable_files.append(str(exc))
            continue
        h, w = int(image.shape[1]), int(image.shape[2])
        try:
            target = ds.load_target(i, size=(h, w))
            ds.check_target_size(i, image, target)
        except DatasetFormatError as exc:
            report.fatal.append(f"{rep.split}: {exc}")
            continue
        rep.readable += 1
        widths.append(w)
        heights.append(h)
        if "sem_seg" in target:
            counts = torch.bincount(target["sem_seg"].reshape(-1), minlength=256)
            rep.background_pixels += int(counts[0])
            rep.ignore_pixels += int(counts[ds.ignore_index])
            present = [c for c in range(1, k + 1) if counts[c] > 0]
            for c in present:
                rep.classes[names[c - 1]].images += 1
                rep.classes[names[c - 1]].pixels += int(counts[c])
            bad = [c for c in range(k + 1, 256) if counts[c] > 0 and c != ds.ignore_index]
            if bad:
                report.fatal.append(f"{rep.split}: {info.path}: class ids {bad[:5]} outside 1..{k}")
            if not present:
                rep.empty_images += 1
        else:
            labels = target["labels"].tolist()
            for c in sorted(set(labels)):
                rep.classes[names[c - 1]].images += 1
            for j, c in enumerate(labels):
                rep.classes[names[c - 1]].instances += 1
                if "masks" in target:
                    rep.classes[names[c - 1]].pixels += int(target["masks"][j].sum())
            if not labels:
                rep.empty_images += 1
    rep.width, rep.height = _size_stats(widths), _size_stats(heights)
    rep.distinct_sizes = len(set(zip(widths, heights, strict=True)))
    header_bad = ds.stats.get("unreadable_images", 0)  # dropped while indexing (bad header)
    rep.unreadable += header_bad
    rep.images += header_bad
    rep.unreadable_files += ds.problems.get("unreadable_images", [])[
        : max(0, MAX_LISTED - len(rep.unreadable_files))
    ]
    rep.stats = dict(ds.stats)
    rep.problems = {kind: list(examples) for kind, examples in ds.problems.items()}
    if rep.checked and not rep.readable:
        report.fatal.append(f"{rep.split}: none of the {rep.checked} checked images could be decoded")


def check_dataset_files(
    name: str, root: str | Path, options: dict[str, Any] | None = None, max_images: int | None = None
) -> CheckReport:
    """Validate dataset ``name`` at ``root`` (both splits); never raises for bad data.

    ``max_images``: decode at most this many images per split (0: indexing checks only, which
    already parse and bound-check every annotation); a negative value is a usage error
    (``ValueError``), not "check nothing".
    """
    if max_images is not None and (
        isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 0
    ):
        raise ValueError(f"max_images must be an integer >= 0 (0 = indexing checks only), got {max_images!r}")
    options = dict(options or {})
    report = CheckReport(name=name, root=str(root), options=options, max_images=max_images)
    sizes = getattr(dataset_class(name), "PAPER_SPLIT_SIZES", None)
    if sizes is not None:
        report.paper_sizes = dict(zip(SPLITS, sizes, strict=True))
    for split in SPLITS:
        rep = SplitReport(split=split)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ds = build_dataset(name, root, split, **options)
            except (DatasetFormatError, ValueError, OSError) as exc:
                report.fatal.append(f"{split}: {exc}")
                census = getattr(exc, "census", None)
                if census:
                    report.class_values[split] = census
                ds = None
        for w in caught:
            msg = str(w.message)
            if msg not in report.warnings and not issubclass(w.category, DeprecationWarning):
                report.warnings.append(msg)
        if ds is None:
            continue
        report.task, report.class_names = ds.task, list(ds.class_names)
        census = getattr(ds, "class_census", None)
        if census:
            report.class_values[split] = census
        _check_split(ds, rep, report, max_images)
        report.splits[split] = rep
    return report


def format_report(report: CheckReport) -> str:
    """Human-readable summary of a :class:`CheckReport`."""
    opts = ", ".join(f"{k}={v!r}" for k, v in report.options.items()) or "defaults"
    lines = [f"dataset {report.name} at {report.root} (options: {opts})"]
    if report.task:
        lines.append(
            f"task: {report.task}, {len(report.class_names)} classes: {', '.join(report.class_names)}"
        )
    for rep in report.splits.values():
        checked = f", {rep.checked} checked" if rep.checked != rep.images else ""
        if report.max_images == 0:
            checked = ", 0 decoded (indexing checks only: --max-images 0)"
        lines.append(
            f"\n[{rep.split}] {rep.images} images{checked}: {rep.readable} readable, "
            f"{rep.unreadable} unreadable (skipped), {rep.empty_images} without annotations"
        )
        if rep.width:
            lines.append(
                f"  size WxH: min {rep.width['min']:.0f}x{rep.height['min']:.0f}, "
                f"max {rep.width['max']:.0f}x{rep.height['max']:.0f}, "
                f"mean {rep.width['mean']}x{rep.height['mean']} ({rep.distinct_sizes} distinct)"
            )
        lines.append(f"  {'class':<34}{'images':>8}{'instances':>11}{'pixels':>12}")
        for cname, cs in rep.classes.items():
            inst = str(cs.instances) if report.task != "semantic" else "-"
            lines.append(f"  {cname:<34}{cs.images:>8}{inst:>11}{cs.pixels:>12}")
        if report.task == "semantic":
            lines.append(
                f"  background pixels {rep.background_pixels}, ignore (255) pixels {rep.ignore_pixels}"
            )
        for kind, count in sorted(rep.stats.items()):
            lines.append(f"  note: {kind.replace('_', ' ')}: {count}")
            for ex in rep.problems.get(kind, [])[:3]:
                lines.append(f"    e.g. {ex}")
        for msg in rep.unreadable_files:
            lines.append(f"  unreadable: {msg}")
    lines += _class_value_lines(report)
    lines += _paper_lines(report)
    if report.warnings:
        lines.append("\nwarnings:")
        lines += [f"  {w}" for w in report.warnings]
    if report.fatal:
        lines.append("\nFATAL:")
        lines += [f"  {f}" for f in report.fatal[:MAX_LISTED]]
        if len(report.fatal) > MAX_LISTED:
            lines.append(f"  ... and {len(report.fatal) - MAX_LISTED} more")
    lines.append(f"\nresult: {'OK' if report.ok else 'FAILED'}")
    return "\n".join(lines)


def _class_value_lines(report: CheckReport) -> list[str]:
    """Every value of the class attribute per split, with the class it becomes (or none)."""
    lines: list[str] = []
    for split, census in report.class_values.items():
        values = census.get("values", {})
        lines.append(
            f"\n[{split}] values of the class attribute {census.get('attribute')!r} ({len(values)}):"
        )
        lines.append(f"  {'value':<40}{'objects':>9}{'images':>8}  class")
        for value, c in values.items():
            target = c.get("class") or "(not in class_map: see option unmapped)"
            lines.append(f"  {value:<40}{c.get('objects', 0):>9}{c.get('images', 0):>8}  {target}")
    return lines


def _paper_lines(report: CheckReport) -> list[str]:
    """Table 1's split sizes next to the ones found, flagged when they differ."""
    if not report.paper_sizes:
        return []
    found = report.found_sizes()
    paper = ", ".join(f"{s} {report.paper_sizes[s]}" for s in SPLITS)
    got = ", ".join(f"{s} {'?' if found[s] is None else found[s]}" for s in SPLITS)
    lines = [f"\npaper Table 1 split sizes: {paper}"]
    if not report.paper_mismatch():
        lines.append(f"found:                     {got} (= Table 1)")
        return lines
    lines.append(f"found:                     {got}  <- DIFFERS from Table 1")
    lines.append(
        "  (expected with synthetic data; with the real data a different download / release or "
        "non-default options (split, empty_images, unmapped, class_map, val_series, ...) change the counts)"
    )
    return lines
