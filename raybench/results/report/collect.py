"""What the report starts from: every trial with its axes, state and final headline value
(:func:`collect_trials`), and the paper's Table 2 in long form (:func:`load_paper`)."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    import os

    from raybench.study import Study

#: The packaged copy of the paper's Table 2 (``raybench/results/paper_table2.csv``).
PAPER_CSV = Path(__file__).resolve().parents[1] / "paper_table2.csv"
#: The paper's datasets in its column order; a study's other datasets follow in the order seen.
PAPER_DATASETS: tuple[str, ...] = ("severstal", "rubber_rings", "rareplanes", "gdxray")
# Fallback headline metric per task (same as raybench.study.spec.DEFAULT_METRIC).
_TASK_METRIC: dict[str, str] = {
    "semantic": "val/mIoU",
    "detection": "val/box_AP50",
    "instance": "val/mask_AP",
}
_PAPER_KEYS = ("backbone", "timm_name", "pretraining", "pretraining_data", "regime")
_METRIC_SUFFIX = re.compile(r"_((?:mIoU|mask_AP|box_AP|AP|mAP|acc|F1)\w*)$")
_FRACTION_SUFFIX = re.compile(r"-s\d+-f(\d+(?:\.\d*)?(?:e-?\d+)?)$")

RowKey = tuple[str, str, str]  # (backbone arch, pretraining, regime)


@dataclass(frozen=True)
class TrialInfo:
    """One trial as the report sees it: its axes, state and final headline value."""

    trial: str
    dataset: str
    backbone: str
    pretraining: str
    regime: str
    seed: int | None
    task: str = ""
    timm_name: str = ""
    state: str = "missing"  # finished | running | failed | missing
    metric: str = ""
    final: float | None = None
    final_iter: int | None = None
    last_iter: int | None = None
    message: str = ""
    attempts: int = 0
    train_fraction: float = 1.0

    @property
    def row(self) -> RowKey:
        return (self.backbone, self.pretraining, self.regime)


def finite(x: Any) -> bool:
    """True for a value that converts to a finite float."""
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def ordered(items: Iterable[Any], first: Sequence[Any]) -> list[Any]:
    """The distinct ``items``: those in ``first`` in its order, then the rest as seen."""
    seen = list(dict.fromkeys(items))
    return [x for x in first if x in seen] + [x for x in seen if x not in first]


def load_paper(path: str | os.PathLike[str] | None = None, datasets: Iterable[str] = ()) -> pd.DataFrame:
    """The paper's Table 2 in long form: backbone, pretraining, regime, dataset, paper_metric,
    paper, order, and the backbone's ``timm_name`` / ``pretraining_data`` where the CSV has them.

    A value column ``<dataset>_<metric>`` belongs to the longest known dataset id it starts
    with (so ``rubber_rings_mIoU`` is Rubber Rings), else to what precedes a metric suffix.
    """
    path = Path(path) if path is not None else PAPER_CSV
    cols = ["backbone", "pretraining", "regime", "dataset", "paper_metric", "paper", "order"]
    cols += ["timm_name", "pretraining_data"]
    if not path.is_file():
        warnings.warn(f"raybench report: paper table {path} not found; no paper numbers", stacklevel=2)
        return pd.DataFrame(columns=cols)
    wide = pd.read_csv(path)
    known = sorted(set(PAPER_DATASETS) | set(datasets), key=len, reverse=True)
    records = []
    for order, rec in enumerate(wide.to_dict("records")):
        for col, value in rec.items():
            if col in _PAPER_KEYS:
                continue
            ds = next((d for d in known if col.startswith(f"{d}_")), None)
            if ds is not None:
                metric = col[len(ds) + 1 :]
            else:
                m = _METRIC_SUFFIX.search(col)
                if not m:
                    continue
                ds, metric = col[: m.start()], m.group(1)
            if not finite(value):
                continue
            records.append(
                {
                    "backbone": str(rec["backbone"]),
                    "pretraining": str(rec["pretraining"]),
                    "regime": str(rec["regime"]),
                    "dataset": ds,
                    "paper_metric": f"val/{metric}",
                    "paper": float(value),
                    "order": order,
                    "timm_name": _text(rec.get("timm_name")),
                    "pretraining_data": _text(rec.get("pretraining_data")),
                }
            )
    return pd.DataFrame.from_records(records, columns=cols)


def _text(value: Any) -> str:
    """A CSV cell as text ("" for an empty one, which pandas reads as NaN)."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def fraction_of_name(name: str) -> float:
    """The training fraction a trial name says (``...-s42-f0.25`` -> 0.25; no suffix: 1.0)."""
    m = _FRACTION_SUFFIX.search(name)
    return float(m.group(1)) if m else 1.0


def _parse_name(name: str) -> dict[str, Any]:
    """Axes from a trial name ``<dataset>-<arch>-<pretraining>-<regime>-s<seed>[-f<fraction>]``
    (fallback)."""
    fraction = fraction_of_name(name)
    base = name[: name.rfind("-f")] if _FRACTION_SUFFIX.search(name) else name
    parts = base.rsplit("-", 4)
    if len(parts) == 5 and re.fullmatch(r"s\d+", parts[4]):
        return {
            "dataset": parts[0],
            "backbone": parts[1],
            "pretraining": parts[2],
            "regime": parts[3],
            "seed": int(parts[4][1:]),
            "train_fraction": fraction,
        }
    return {"dataset": "?", "backbone": name, "pretraining": "?", "regime": "?", "seed": None}


def _trial_axes(
    results: pd.DataFrame, statuses: Mapping[str, Mapping[str, Any]], study: Study | None
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Every trial's axes (the study's, else the store's rows, else ``status.json``'s, else
    its name's) and the headline metric the study gives it."""
    axes: dict[str, dict[str, Any]] = {}
    metric_of: dict[str, str] = {}
    if study is not None:
        for t in study.trials:
            axes[t.name] = t.axes()
            metric_of[t.name] = t.dataset.headline_metric
    if not results.empty:
        keys = ("dataset", "backbone", "pretraining", "regime", "seed", "task", "timm_name")
        for rec in results.drop_duplicates("trial").to_dict("records"):
            axes.setdefault(rec["trial"], {k: rec[k] for k in keys})
    for name, status in statuses.items():
        if name not in axes:
            given = status.get("axes")
            axes[name] = dict(given) if isinstance(given, Mapping) else _parse_name(name)
    return axes, metric_of


def collect_trials(
    results: pd.DataFrame, statuses: Mapping[str, Mapping[str, Any]], study: Study | None = None
) -> list[TrialInfo]:
    """Every trial the study expects or the store knows, with its state and final value."""
    axes, metric_of = _trial_axes(results, statuses, study)
    by_trial = {name: g for name, g in results.groupby("trial", sort=False)} if not results.empty else {}
    out = []
    for name, ax in axes.items():
        status = statuses.get(name, {})
        rows = by_trial.get(name)
        task = str(ax.get("task") or "")
        metric = (
            metric_of.get(name)
            or status.get("metric")
            or status.get("headline_metric")
            or _TASK_METRIC.get(task, "")
        )
        final = final_iter = last_iter = None
        if rows is not None and len(rows):
            last_iter = int(rows["iter"].max())
            h = rows[rows["metric"] == metric]
            if len(h):
                h = h.sort_values("iter", kind="stable")
                final_iter = int(h["iter"].iloc[-1])
                v = float(h["value"].iloc[-1])
                final = v if math.isfinite(v) else None
        state = str(status.get("state") or ("running" if rows is not None and len(rows) else "missing"))
        seed = ax.get("seed")
        fraction = ax.get("train_fraction")
        out.append(
            TrialInfo(
                trial=name,
                dataset=str(ax.get("dataset")),
                backbone=str(ax.get("backbone")),
                pretraining=str(ax.get("pretraining")),
                regime=str(ax.get("regime")),
                seed=int(seed) if finite(seed) else None,
                task=task,
                timm_name=str(ax.get("timm_name") or ""),
                state=state,
                metric=metric,
                final=final,
                final_iter=final_iter,
                last_iter=last_iter,
                message=str(status.get("message") or ""),
                attempts=int(status.get("attempts") or 0),
                train_fraction=float(fraction) if finite(fraction) else fraction_of_name(name),
            )
        )
    return out


def state_counts(trials: Iterable[TrialInfo]) -> dict[str, int]:
    """How many trials are in each state (in the order first seen)."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts


__all__ = [
    "PAPER_CSV",
    "PAPER_DATASETS",
    "RowKey",
    "TrialInfo",
    "collect_trials",
    "finite",
    "fraction_of_name",
    "load_paper",
    "ordered",
    "state_counts",
]
