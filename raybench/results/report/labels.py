"""How the report names and colours its rows, derived from the study's backbones.

Why derived: a study may have any backbones (ViTs, a ResNet-18, another pretraining); the
names in tables and legends, the curve colours and the curves' caption come from the study's
backbone specs and the rows the report has, never from a list of the paper's backbones.
Known ids get a readable name (:data:`ARCH_NAMES`, :data:`METHOD_NAMES`); any other id is
shown as the study writes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from raybench.results.report.collect import RowKey, TrialInfo

if TYPE_CHECKING:
    from raybench.study import Study

#: Display names of architecture ids (others are shown as written).
ARCH_NAMES: dict[str, str] = {
    "resnet50_gn": "ResNet-50 (GN)",
    "convnext_t": "ConvNeXt-T",
    "vit_s16": "ViT-S/16",
    "vit_b16": "ViT-B/16",
    "vit_l16": "ViT-L/16",
}
#: Display names of pretraining methods (others are shown as written).
METHOD_NAMES: dict[str, str] = {
    "supervised": "sup.",
    "dinov3": "DINOv3",
    "dinov3_sat": "DINOv3",
    "dinov2": "DINOv2",
}
#: A self-supervised method's own pretraining data, which its name implies: "DINOv3", not
#: "DINOv3 LVD-1689M"; any other data is named ("DINOv3 SAT-493M", "sup. IN-1k").
METHOD_DATA: dict[str, str] = {"dinov3": "LVD-1689M", "dinov2": "LVD-142M"}
#: Display names of dataset ids (others are shown as written).
DATASET_NAMES: dict[str, str] = {
    "severstal": "Severstal",
    "rubber_rings": "Rubber Rings",
    "rareplanes": "RarePlanes",
    "gdxray": "GDXray",
}
#: Curve colours, given to the backbones in :func:`colour_order`; cycled beyond ten.
PALETTE: tuple[str, ...] = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
)
#: Line style per regime (any other regime: dotted), and how the caption words them.
LINE_STYLES: dict[str, str] = {"full": "-", "frozen": "--"}
_STYLE_WORDS = {"-": "solid", "--": "dashed", ":": "dotted"}
_REGIME_WORDS = {"full": "full fine-tuning", "frozen": "frozen backbone"}


def arch_label(arch: str) -> str:
    return ARCH_NAMES.get(arch, arch)


def dataset_label(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


def short_data(data: str) -> str:
    """``ImageNet-1k`` -> ``IN-1k``; other names unchanged."""
    return "IN-" + data[len("ImageNet-") :] if data.startswith("ImageNet-") else data


def pretraining_label(pretraining: str, data: str = "") -> str:
    """``sup. IN-1k``, ``DINOv3``, ``DINOv3 SAT-493M``: the method and, unless the method
    implies it, its pretraining data. Without known data: the method for a method that implies
    its data, else the id as written (``supervised``: on what, is not known)."""
    method = METHOD_NAMES.get(pretraining, pretraining)
    if not data:
        return method if pretraining in METHOD_DATA else pretraining
    if data == METHOD_DATA.get(pretraining):
        return method
    return f"{method} {short_data(data)}"


def row_label(row: RowKey) -> tuple[str, str, str]:
    """Human-readable (backbone, pretraining, regime) of a row, knowing no pretraining data
    (:class:`Legend` names it from the study)."""
    arch, pre, regime = row
    return arch_label(arch), pretraining_label(pre), regime


def colour_order(pairs: Sequence[tuple[str, str]], reference: str = "supervised") -> list[tuple[str, str]]:
    """The order in which (arch, pretraining) pairs take :data:`PALETTE`'s colours: first the
    architectures the report compares under several pretrainings (``reference`` first, then
    the others as the rows have them), then the rest in row order. So the comparison the
    report is about gets the first colours (blue = reference, orange, ...) in every study."""
    by_arch: dict[str, list[str]] = {}
    for arch, pre in dict.fromkeys(pairs):
        by_arch.setdefault(arch, []).append(pre)
    compared = [
        (arch, pre)
        for arch, pres in by_arch.items()
        if len(pres) > 1
        for pre in sorted(pres, key=lambda p: p != reference)
    ]
    return compared + [p for p in dict.fromkeys(pairs) if p not in compared]


@dataclass(frozen=True)
class Legend:
    """Names and colours of one report's rows (:func:`legend_for`)."""

    names: Mapping[tuple[str, str], tuple[str, str]]  # (arch, pretraining) -> display names
    colours: Mapping[tuple[str, str], str]  # (arch, pretraining) -> matplotlib colour
    regimes: tuple[str, ...] = ()

    def row(self, row: RowKey) -> tuple[str, str, str]:
        """(backbone, pretraining, regime) as tables show them."""
        arch, pre, regime = row
        name = self.names.get((arch, pre))
        return (*name, regime) if name else row_label(row)

    def text(self, row: RowKey) -> str:
        """The row as one legend entry: ``ConvNeXt-T · DINOv3 · full``."""
        return " · ".join(self.row(row))

    def colour(self, row: RowKey) -> str:
        return self.colours.get((row[0], row[1]), PALETTE[len(self.colours) % len(PALETTE)])

    @staticmethod
    def style(row: RowKey) -> str:
        return LINE_STYLES.get(row[2], ":")

    def caption(self) -> str:
        """What colours and line styles mean in this report's figures."""
        colours = ", ".join(
            f"{c.removeprefix('tab:')}: {' '.join(self.names[k])}" for k, c in self.colours.items()
        )
        styles = ", ".join(
            f"{_STYLE_WORDS[LINE_STYLES.get(r, ':')]} {_REGIME_WORDS.get(r, r)}" for r in self.regimes
        )
        return f"Colour: backbone and pretraining ({colours}); line: {styles}."


def legend_for(
    rows: Sequence[RowKey],
    study: Study | None = None,
    trials: Iterable[TrialInfo] = (),
    paper: pd.DataFrame | None = None,
    reference: str = "supervised",
) -> Legend:
    """The legend of a report with these ``rows``. Pretraining data comes from the study's
    backbone specs (``pretraining_data``), else, for a trial whose timm weights are the
    paper's (same ``timm_name``), from the paper's table; names that would still collide show
    the pretraining id."""
    data: dict[tuple[str, str], str] = {}
    if study is not None:
        for b in study.backbones:
            data.setdefault((b.arch, b.pretraining), b.pretraining_data)
    if paper is not None and "timm_name" in paper:
        by_timm = {t: d for t, d in zip(paper["timm_name"], paper["pretraining_data"]) if t and d}
        for t in trials:
            if t.timm_name in by_timm:
                data.setdefault((t.backbone, t.pretraining), by_timm[t.timm_name])
    pairs = colour_order([(r[0], r[1]) for r in rows], reference)
    names = {(a, p): (arch_label(a), pretraining_label(p, data.get((a, p), ""))) for a, p in pairs}
    shown = list(names.values())
    for (a, p), name in names.items():
        if shown.count(name) > 1:
            names[(a, p)] = (name[0], p)
    colours = {pair: PALETTE[i % len(PALETTE)] for i, pair in enumerate(pairs)}
    regimes = tuple(dict.fromkeys(r[2] for r in rows))
    return Legend(names=names, colours=colours, regimes=regimes)


__all__ = [
    "ARCH_NAMES",
    "DATASET_NAMES",
    "LINE_STYLES",
    "METHOD_DATA",
    "METHOD_NAMES",
    "PALETTE",
    "Legend",
    "arch_label",
    "colour_order",
    "dataset_label",
    "legend_for",
    "pretraining_label",
    "row_label",
    "short_data",
]
