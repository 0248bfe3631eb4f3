"""The report's figures: learning curves (``curves_<dataset>.png``) and label efficiency
(``fractions_<dataset>.png``), 800 x 500 px.

Each figure is first a list of :class:`Line` (what to draw: label, colour, style, points,
min-max band: :func:`curve_lines`, :func:`fraction_lines`), then drawn (:func:`plot_curves`,
:func:`plot_fractions`, both through :func:`draw`); colours and names come from the report's
:class:`~raybench.results.report.labels.Legend`, so every figure of one report colours a
backbone the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from raybench.results.report.collect import RowKey, TrialInfo
from raybench.results.report.labels import Legend, dataset_label

CURVE_SIZE = (8.0, 5.0)  # inches
CURVE_DPI = 100  # -> 800 x 500 px


@dataclass(frozen=True)
class Line:
    """One legend entry of a figure: mean ``y`` over seeds at ``x``, min-max band ``low`` /
    ``high`` (None for one seed)."""

    label: str
    colour: str
    style: str
    x: np.ndarray
    y: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None


def safe_name(name: str) -> str:
    """A dataset id as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def curve_lines(
    results: pd.DataFrame,
    trials: Sequence[TrialInfo],
    rows: Sequence[RowKey],
    dataset: str,
    metric: str,
    legend: Legend,
) -> list[Line]:
    """One line per row with evaluations of ``metric`` on ``dataset``; the label says ``n=``
    for several seeds and names states other than finished."""
    data = results
    if len(results):
        data = results[(results["dataset"] == dataset) & (results["metric"] == metric)]
    lines = []
    for row in rows:
        names = [t.trial for t in trials if t.row == row and t.dataset == dataset]
        sub = data[data["trial"].isin(names)] if len(data) else data
        if sub is None or sub.empty:
            continue
        wide = sub.pivot_table(index="iter", columns="trial", values="value", aggfunc="last").sort_index()
        states = {t.state for t in trials if t.trial in wide.columns}
        note = "" if states <= {"finished"} else " (" + ", ".join(sorted(states - {"finished"})) + ")"
        n = wide.shape[1]
        lines.append(
            Line(
                label=legend.text(row) + (f" (n={n})" if n > 1 else "") + note,
                colour=legend.colour(row),
                style=legend.style(row),
                x=wide.index.to_numpy(),
                y=wide.mean(axis=1).to_numpy(),
                low=wide.min(axis=1).to_numpy() if n > 1 else None,
                high=wide.max(axis=1).to_numpy() if n > 1 else None,
            )
        )
    return lines


def fraction_lines(frame: pd.DataFrame, rows: Sequence[RowKey], dataset: str, legend: Legend) -> list[Line]:
    """One line per row with a finished value on ``dataset`` (``fractions.csv`` rows)."""
    sub = frame[(frame["dataset"] == dataset) & frame["mean"].notna()] if len(frame) else frame
    lines = []
    for row in rows:
        line = sub[(sub["backbone"] == row[0]) & (sub["pretraining"] == row[1]) & (sub["regime"] == row[2])]
        if line.empty:
            continue
        line = line.sort_values("train_fraction")
        n = int(line["n_seeds"].max())
        lines.append(
            Line(
                label=legend.text(row) + (f" (n={n})" if n > 1 else ""),
                colour=legend.colour(row),
                style=legend.style(row),
                x=line["train_fraction"].to_numpy(float),
                y=line["mean"].to_numpy(float),
                low=line["min"].to_numpy(float) if n > 1 else None,
                high=line["max"].to_numpy(float) if n > 1 else None,
            )
        )
    return lines


def draw(
    lines: Sequence[Line],
    path: Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    empty: str,
    markersize: float = 3,
    log_ticks: Sequence[float] | None = None,
) -> Path:
    """Draw ``lines`` into ``path`` (PNG): several seeds as a min-max band, the legend, or
    ``empty`` in the middle when there is nothing to draw. ``log_ticks``: a log x axis
    with exactly these ticks (else integer ticks)."""
    # The Agg canvas directly (no pyplot): no global backend switch, safe in threads/notebooks.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

    fig = Figure(figsize=CURVE_SIZE, dpi=CURVE_DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for ln in lines:
        ax.plot(
            ln.x,
            ln.y,
            ln.style,
            color=ln.colour,
            marker="o",
            markersize=markersize,
            linewidth=1.6,
            label=ln.label,
        )
        if ln.low is not None and ln.high is not None:
            ax.fill_between(ln.x, ln.low, ln.high, color=ln.colour, alpha=0.15)
    if log_ticks is not None:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(list(log_ticks)))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{t:g}" for t in log_ticks])
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if lines:
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=CURVE_DPI)
    return path


def plot_curves(lines: Sequence[Line], dataset: str, metric: str, path: Path) -> Path:
    """``curves_<dataset>.png`` from :func:`curve_lines`: val headline metric vs iteration."""
    return draw(
        lines,
        path,
        title=f"{dataset_label(dataset)} — {metric} (validation) vs iteration",
        xlabel="iteration",
        ylabel=metric,
        empty="no evaluation points yet",
    )


def plot_fractions(
    lines: Sequence[Line], fractions: Sequence[float], dataset: str, metric: str, path: Path
) -> Path:
    """``fractions_<dataset>.png`` from :func:`fraction_lines`: final headline metric vs
    training fraction, log x axis with ticks at the study's ``fractions``."""
    return draw(
        lines,
        path,
        title=f"{dataset_label(dataset)} — {metric} (validation, final) vs training fraction",
        xlabel="share of the training split (nested, class-stratified subsets)",
        ylabel=metric,
        empty="no finished trial yet",
        markersize=4,
        log_ticks=sorted(set(fractions)) or [1.0],
    )


__all__ = [
    "CURVE_DPI",
    "CURVE_SIZE",
    "Line",
    "curve_lines",
    "draw",
    "fraction_lines",
    "plot_curves",
    "plot_fractions",
    "safe_name",
]
