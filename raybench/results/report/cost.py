"""Cost per trial (``cost.csv``): wall time over all attempts, GPU- and CPU-hours, images/s."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from raybench.results.report.collect import RowKey, TrialInfo

if TYPE_CHECKING:
    from raybench.study import Study

COST_COLUMNS: tuple[str, ...] = (
    "trial",
    "dataset",
    "backbone",
    "pretraining",
    "regime",
    "seed",
    "state",
    "iters",
    "attempts",
    "wall_time_s",
    "wall_time_h",
    "workers",
    "gpus_per_worker",
    "cpus_per_worker",
    "gpu_hours",
    "cpu_hours",
    "imgs_per_s",
)


def _wall_seconds(wall: pd.Series) -> float:
    """Total wall time of rows in write order: a restarted attempt starts its clock at 0
    again, so sum the maximum of each run of non-decreasing times."""
    w = wall.astype(float).reset_index(drop=True)
    if w.empty:
        return 0.0
    segment = (w < w.shift(fill_value=w.iloc[0]) - 1e-9).cumsum()
    return float(w.groupby(segment).max().sum())


def cost_table(raw: pd.DataFrame, trials: Sequence[TrialInfo], study: Study | None = None) -> pd.DataFrame:
    """Per trial: wall time (all attempts), GPU-hours = wall x workers x GPUs/worker, images/s.

    ``raw``: the store's rows in write order (``read_results(..., dedupe_rows=False)``), so
    time spent before a crash counts too. A trial that never wrote a row gets the study's
    resources and no time; a missing one (never started) no line."""
    scaling = study.scaling if study is not None else None
    by_trial = {n: g for n, g in raw.groupby("trial", sort=False)} if not raw.empty else {}
    recs = []
    for t in trials:
        rows = by_trial.get(t.trial)
        if t.state == "missing" and rows is None:
            continue
        if rows is not None and len(rows):
            first = rows.iloc[0]
            workers, gpw, cpw = (
                int(first["workers"]),
                float(first["gpus_per_worker"]),
                float(first["cpus_per_worker"]),
            )
            wall = _wall_seconds(rows["wall_time"])
            ips = rows.loc[rows["metric"] == "imgs_per_s", "value"].astype(float)
            ips = ips[ips.map(math.isfinite)]
            imgs = float(ips.mean()) if len(ips) else None
        else:
            workers = scaling.workers if scaling else 0
            gpw = (scaling.gpus_per_worker if scaling.use_gpu else 0.0) if scaling else 0.0
            cpw = scaling.cpus_per_worker if scaling else 0.0
            wall, imgs = 0.0, None
        hours = wall / 3600.0
        recs.append(
            {
                "trial": t.trial,
                "dataset": t.dataset,
                "backbone": t.backbone,
                "pretraining": t.pretraining,
                "regime": t.regime,
                "seed": t.seed,
                "state": t.state,
                "iters": t.last_iter,
                "attempts": t.attempts,
                "wall_time_s": wall,
                "wall_time_h": hours,
                "workers": workers,
                "gpus_per_worker": gpw,
                "cpus_per_worker": cpw,
                "gpu_hours": hours * workers * gpw,
                "cpu_hours": hours * workers * cpw,
                "imgs_per_s": imgs,
            }
        )
    return pd.DataFrame.from_records(recs, columns=list(COST_COLUMNS))


def in_table_order(cost: pd.DataFrame, rows: Sequence[RowKey], datasets: Sequence[str]) -> pd.DataFrame:
    """``cost`` in Table 2's order: dataset column, then row, then seed (others last)."""
    if not len(cost):
        return cost
    rank = {(r, d): i for i, (r, d) in enumerate((r, d) for d in datasets for r in rows)}
    key = [
        rank.get(((b, p, g), d), len(rank))
        for b, p, g, d in zip(cost["backbone"], cost["pretraining"], cost["regime"], cost["dataset"])
    ]
    out = cost.assign(_k=key).sort_values(["_k", "seed"], kind="stable")
    return out.drop(columns="_k").reset_index(drop=True)


__all__ = ["COST_COLUMNS", "cost_table", "in_table_order"]
