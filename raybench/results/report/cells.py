"""Table 2's cells (every seed of one row and dataset), their CSV, and the paired deltas
between two pretrainings of the same backbone.

Each cell uses the value at the trial's **final** evaluation, as the paper does (not the
best one); several seeds give mean and sample std. Bootstrap intervals, where per-image
records exist, are attached by :func:`raybench.results.report.build_report`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from raybench.results.bootstrap import Interval
from raybench.results.report.collect import PAPER_DATASETS, RowKey, TrialInfo, ordered
from raybench.results.report.labels import Legend, row_label

if TYPE_CHECKING:
    from raybench.study import Study

MISSING = "—  missing"
FAILED = "✗ failed"
RUNNING = "… running"


def signed(x: float | None) -> str:
    return "" if x is None else f"{x:+.2f}"


@dataclass
class Cell:
    """One cell of Table 2: every seed of one (row, dataset)."""

    row: RowKey
    dataset: str
    metric: str
    trials: list[TrialInfo]
    status: str = "missing"  # finished | partial | running | failed | no-metric | missing
    mean: float | None = None
    std: float | None = None
    n_seeds: int = 0
    seeds: dict[int, float] = field(default_factory=dict)
    iter: int | None = None
    paper: float | None = None
    paper_metric: str = ""
    best: bool = False
    ci: Interval | None = None

    @property
    def delta(self) -> float | None:
        if self.mean is None or self.paper is None:
            return None
        return self.mean - self.paper

    def text(self, bold: bool = True) -> str:
        """The cell as shown: ``64.10 [63.52, 64.71] (paper 64.01, +0.09)`` (the bootstrap
        interval where records exist) or a state marker."""
        if self.mean is not None:
            return self._value_text(bold)
        if self.status == "running":
            last = [t for t in self.trials if t.state == "running" and t.final is not None]
            tail = f" (last {last[0].final:.2f})" if last else ""
            return f"{RUNNING} @ iter {self.iter or 0}{tail}"
        if self.status == "failed":
            return FAILED + (f" @ iter {self.iter}" if self.iter is not None else "")
        if self.status == "no-metric":
            return f"? no {self.metric}"
        return MISSING

    def _value_text(self, bold: bool) -> str:
        num = f"{self.mean:.2f}"
        if self.best and bold:
            num = f"**{num}**"
        if self.n_seeds > 1:
            num += f" ± {self.std:.2f}"
        if self.ci is not None:
            num += f" {self.ci.text()}"
        notes = [f"n={self.n_seeds}"] if self.n_seeds > 1 else []
        if self.paper is not None:
            notes.append(f"paper {self.paper:.2f}, {signed(self.delta)}")
        out = num + (f" ({'; '.join(notes)})" if notes else "")
        others = [t for t in self.trials if t.state != "finished" or t.final is None]
        if others:
            counts: dict[str, int] = {}
            for t in others:
                counts[t.state] = counts.get(t.state, 0) + 1
            out += " [" + ", ".join(f"+{n} {s}" for s, n in sorted(counts.items())) + "]"
        return out


def _fill(cell: Cell) -> None:
    """The cell's status, value over its finished seeds, and iteration."""
    ts = cell.trials
    fin = [t for t in ts if t.state == "finished" and t.final is not None]
    if fin:
        vals = [t.final for t in fin]
        cell.status = "finished" if len(fin) == len(ts) else "partial"
        cell.n_seeds = len(vals)
        cell.mean = sum(vals) / len(vals)
        cell.std = pd.Series(vals).std(ddof=1) if len(vals) > 1 else 0.0
        cell.seeds = {t.seed if t.seed is not None else i: t.final for i, t in enumerate(fin)}
        cell.iter = max(t.final_iter or 0 for t in fin)
    elif any(t.state == "running" for t in ts):
        cell.status = "running"
        cell.iter = max((t.last_iter or 0) for t in ts if t.state == "running")
    elif any(t.state == "failed" for t in ts):
        cell.status = "failed"
        its = [t.last_iter for t in ts if t.state == "failed" and t.last_iter is not None]
        cell.iter = max(its) if its else None
    elif any(t.state == "finished" for t in ts):
        cell.status = "no-metric"


def build_cells(
    trials: Sequence[TrialInfo],
    paper: pd.DataFrame,
    study: Study | None = None,
) -> tuple[list[RowKey], list[str], list[Cell]]:
    """Rows (paper order first, then the study's, then any other seen), datasets (likewise)
    and every (row, dataset) cell; a cell the paper has carries the paper's value."""
    paper_rows = list(dict.fromkeys(zip(paper["backbone"], paper["pretraining"], paper["regime"])))
    if study is not None:
        by_id = {b.id: b for b in study.backbones}
        seen_rows = [(by_id[r.backbone].arch, by_id[r.backbone].pretraining, r.regime) for r in study.rows]
        seen_ds = [d.id for d in study.datasets]
    else:
        seen_rows, seen_ds = [], []
    rows = ordered([*seen_rows, *(t.row for t in trials)], paper_rows)
    datasets = ordered([*seen_ds, *(t.dataset for t in trials)], PAPER_DATASETS)
    paper_of = {
        (r["backbone"], r["pretraining"], r["regime"], r["dataset"]): (r["paper"], r["paper_metric"])
        for r in paper.to_dict("records")
    }
    groups: dict[tuple[RowKey, str], list[TrialInfo]] = {}
    for t in trials:
        groups.setdefault((t.row, t.dataset), []).append(t)
    metric_of_ds: dict[str, str] = {}
    for d in datasets:
        ms = [t.metric for t in trials if t.dataset == d and t.metric]
        metric_of_ds[d] = max(set(ms), key=ms.count) if ms else ""
    cells = []
    for row in rows:
        for d in datasets:
            ts = sorted(groups.get((row, d), []), key=lambda t: (t.seed is None, t.seed or 0))
            cell = Cell(row=row, dataset=d, metric=metric_of_ds[d], trials=ts)
            p = paper_of.get((*row, d))
            if p is not None:
                cell.paper, cell.paper_metric = float(p[0]), str(p[1])
            _fill(cell)
            cells.append(cell)
    for d in datasets:  # best per column (all headline metrics are higher-is-better)
        col = [c for c in cells if c.dataset == d and c.mean is not None]
        if col:
            top = max(round(c.mean, 2) for c in col)
            for c in col:
                c.best = round(c.mean, 2) == top
    return rows, datasets, cells


def cells_frame(cells: Sequence[Cell], legend: Legend | None = None) -> pd.DataFrame:
    """table2.csv: one row per (row, dataset)."""
    recs = []
    for c in cells:
        b, p, r = legend.row(c.row) if legend is not None else row_label(c.row)
        recs.append(
            {
                "row": f"{b} | {p} | {r}",
                "backbone": c.row[0],
                "pretraining": c.row[1],
                "regime": c.row[2],
                "dataset": c.dataset,
                "metric": c.metric,
                "ours": c.mean,
                "ours_std": c.std if c.n_seeds > 1 else None,
                "n_seeds": c.n_seeds,
                "paper": c.paper,
                "paper_metric": c.paper_metric or None,
                "delta": c.delta,
                "status": c.status,
                "iter": c.iter,
                "best": c.best,
                "seeds": ";".join(f"{s}:{v:.4f}" for s, v in sorted(c.seeds.items())),
                "trials": ";".join(t.trial for t in c.trials),
                "cell": c.text(bold=False),
                **ci_columns(c.ci),
                "paper_in_ci": c.ci.contains(c.paper) if c.ci is not None else None,
            }
        )
    frame = pd.DataFrame.from_records(recs)
    if len(frame):
        frame["iter"] = frame["iter"].astype("Int64")
    return frame


def ci_columns(ci: Interval | None) -> dict[str, Any]:
    """The interval's CSV columns (empty where there is none)."""
    return {
        "ci_low": ci.low if ci else None,
        "ci_high": ci.high if ci else None,
        "ci_level": ci.level if ci else None,
        "ci_method": ci.method if ci else None,
        "ci_resamples": ci.resamples if ci else None,
        "ci_images": ci.images if ci else None,
    }


PAIRED_COLUMNS: tuple[str, ...] = (
    "backbone",
    "regime",
    "dataset",
    "metric",
    "comparison",
    "n_pairs",
    "mean",
    "std",
    "per_seed",
    "paper_delta",
    *ci_columns(None),
    "excludes_zero",
    "paper_in_ci",
)


def paired_deltas(
    cells: Sequence[Cell],
    reference: str = "supervised",
    intervals: Mapping[tuple[str, str, str, str, str], Interval] | None = None,
) -> pd.DataFrame:
    """Per-seed differences between two pretrainings on the same backbone, regime, dataset.

    ``other - reference`` for each seed both finished (e.g. dinov3 - supervised; without a
    ``reference`` pretraining, the first id in sort order is the reference), then mean and
    sample std over seeds; the paper's difference beside it. ``intervals`` (from
    :func:`raybench.results.bootstrap.bootstrap_report`, keyed ``(arch, regime, dataset,
    other, reference)``) add the paired bootstrap interval, whether it excludes zero and
    whether the paper's delta lies inside it.
    """
    by_key: dict[tuple[str, str, str], dict[str, Cell]] = {}
    for c in cells:
        by_key.setdefault((c.row[0], c.row[2], c.dataset), {})[c.row[1]] = c
    recs = []
    for (arch, regime, d), by_pre in by_key.items():
        if len(by_pre) < 2:
            continue
        ref = reference if reference in by_pre else sorted(by_pre)[0]
        a = by_pre[ref]
        for pre, b in sorted(by_pre.items()):
            common = sorted(set(a.seeds) & set(b.seeds))
            if pre == ref or not common:
                continue
            diffs = [b.seeds[s] - a.seeds[s] for s in common]
            paper = b.paper - a.paper if a.paper is not None and b.paper is not None else None
            ci = (intervals or {}).get((arch, regime, d, pre, ref))
            recs.append(
                {
                    "backbone": arch,
                    "regime": regime,
                    "dataset": d,
                    "metric": b.metric,
                    "comparison": f"{pre} − {ref}",
                    "n_pairs": len(diffs),
                    "mean": sum(diffs) / len(diffs),
                    "std": pd.Series(diffs).std(ddof=1) if len(diffs) > 1 else None,
                    "per_seed": ";".join(f"{s}:{v:+.4f}" for s, v in zip(common, diffs)),
                    "paper_delta": paper,
                    **ci_columns(ci),
                    "excludes_zero": ci.excludes_zero() if ci is not None else None,
                    "paper_in_ci": ci.contains(paper) if ci is not None else None,
                }
            )
    return pd.DataFrame.from_records(recs, columns=list(PAIRED_COLUMNS))


__all__ = [
    "FAILED",
    "MISSING",
    "PAIRED_COLUMNS",
    "RUNNING",
    "Cell",
    "build_cells",
    "cells_frame",
    "ci_columns",
    "paired_deltas",
]
