"""The study's report: Table 2 next to the paper's numbers, learning curves, cost.

Why it reads only the results store (Parquet parts + ``status.json``) and never Ray or W&B:
a report must be buildable from the experiment folder alone — while the sweep still runs,
after a crash, on a laptop that copied the folder, or straight from ``s3://``. The study
file is optional: it only adds the trials that never started (shown as missing).

Values are taken as the evaluators write them (percentages, 0-100, like Detectron2), and
each cell uses the value at the trial's **final** evaluation, as the paper does (not the
best one). Where the trials stored per-image records of that evaluation, every cell and paired
delta also gets a 95 % bootstrap interval (:mod:`raybench.results.bootstrap`).
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from raybench.results.bootstrap import LEVEL, RESAMPLES, Bootstrap, Interval, bootstrap_report, warn_notes
from raybench.results.store import dedupe, read_eval_records, read_results, read_status

if TYPE_CHECKING:
    from raybench.study import Study

PAPER_CSV = Path(__file__).with_name("paper_table2.csv")

#: Datasets and rows in the paper's order (Table 2); others follow in the order seen.
PAPER_DATASETS: tuple[str, ...] = ("severstal", "rubber_rings", "rareplanes", "gdxray")
ARCH_NAMES: dict[str, str] = {
    "resnet50_gn": "ResNet-50 (GN)",
    "convnext_t": "ConvNeXt-T",
    "vit_s16": "ViT-S/16",
    "vit_b16": "ViT-B/16",
    "vit_l16": "ViT-L/16",
}
PRETRAINING_NAMES: dict[str, str] = {
    "supervised": "sup. IN-1k",
    "dinov3": "DINOv3",
    "dinov3_sat": "DINOv3 SAT-493M",
}
DATASET_NAMES: dict[str, str] = {
    "severstal": "Severstal",
    "rubber_rings": "Rubber Rings",
    "rareplanes": "RarePlanes",
    "gdxray": "GDXray",
}
# Fallback headline metric per task (same as raybench.study.spec.DEFAULT_METRIC).
_TASK_METRIC: dict[str, str] = {
    "semantic": "val/mIoU",
    "detection": "val/box_AP50",
    "instance": "val/mask_AP",
}
_PAPER_KEYS = ("backbone", "timm_name", "pretraining", "pretraining_data", "regime")
_METRIC_SUFFIX = re.compile(r"_((?:mIoU|mask_AP|box_AP|AP|mAP|acc|F1)\w*)$")

MISSING = "—  missing"
FAILED = "✗ failed"
RUNNING = "… running"

RowKey = tuple[str, str, str]  # (backbone arch, pretraining, regime)


# ---------------------------------------------------------------------------------------
# data model


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
            num = f"{self.mean:.2f}"
            if self.best and bold:
                num = f"**{num}**"
            if self.n_seeds > 1:
                num += f" ± {self.std:.2f}"
            if self.ci is not None:
                num += f" {self.ci.text()}"
            notes = [f"n={self.n_seeds}"] if self.n_seeds > 1 else []
            if self.paper is not None:
                notes.append(f"paper {self.paper:.2f}, {_signed(self.delta)}")
            out = num + (f" ({'; '.join(notes)})" if notes else "")
            others = [t for t in self.trials if t.state != "finished" or t.final is None]
            if others:
                counts: dict[str, int] = {}
                for t in others:
                    counts[t.state] = counts.get(t.state, 0) + 1
                out += " [" + ", ".join(f"+{n} {s}" for s, n in sorted(counts.items())) + "]"
            return out
        if self.status == "running":
            last = [t for t in self.trials if t.state == "running" and t.final is not None]
            tail = f" (last {last[0].final:.2f})" if last else ""
            return f"{RUNNING} @ iter {self.iter or 0}{tail}"
        if self.status == "failed":
            return FAILED + (f" @ iter {self.iter}" if self.iter is not None else "")
        if self.status == "no-metric":
            return f"? no {self.metric}"
        return MISSING


@dataclass
class ReportResult:
    """What :func:`build_report` wrote, plus the frames behind it (for callers and tests)."""

    out_dir: Path
    markdown: Path
    table2: pd.DataFrame
    table2_csv: Path
    cost: pd.DataFrame
    cost_csv: Path
    paired: pd.DataFrame
    curves: dict[str, Path]
    trials: list[TrialInfo]
    cells: list[Cell]
    counts: dict[str, int]
    study: str
    wandb_url: str | None = None
    bootstrap: Bootstrap | None = None
    #: label efficiency (studies with ``train_fractions``): fractions.csv, fractions_<dataset>.png
    fractions: pd.DataFrame = field(default_factory=pd.DataFrame)
    fraction_plots: dict[str, Path] = field(default_factory=dict)


def _signed(x: float | None) -> str:
    return "" if x is None else f"{x:+.2f}"


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def row_label(row: RowKey) -> tuple[str, str, str]:
    """Human-readable (backbone, pretraining, regime) for a row key."""
    arch, pre, regime = row
    return ARCH_NAMES.get(arch, arch), PRETRAINING_NAMES.get(pre, pre), regime


def dataset_label(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


# ---------------------------------------------------------------------------------------
# the paper's numbers


def load_paper(path: str | os.PathLike[str] | None = None, datasets: Iterable[str] = ()) -> pd.DataFrame:
    """The paper's Table 2 in long form: backbone, pretraining, regime, dataset, paper_metric, paper.

    A value column ``<dataset>_<metric>`` belongs to the longest known dataset id it starts
    with (so ``rubber_rings_mIoU`` is Rubber Rings), else to what precedes a metric suffix.
    """
    path = Path(path) if path is not None else PAPER_CSV
    cols = ["backbone", "pretraining", "regime", "dataset", "paper_metric", "paper", "order"]
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
            if not _finite(value):
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
                }
            )
    return pd.DataFrame.from_records(records, columns=cols)


# ---------------------------------------------------------------------------------------
# trials


_FRACTION_SUFFIX = re.compile(r"-s\d+-f(\d+(?:\.\d*)?(?:e-?\d+)?)$")


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


def collect_trials(
    results: pd.DataFrame, statuses: Mapping[str, Mapping[str, Any]], study: Study | None = None
) -> list[TrialInfo]:
    """Every trial the study expects or the store knows, with its state and final value."""
    axes: dict[str, dict[str, Any]] = {}
    metric_of: dict[str, str] = {}
    if study is not None:
        for t in study.trials:
            axes[t.name] = t.axes()
            metric_of[t.name] = t.dataset.headline_metric
    if not results.empty:
        firsts = results.drop_duplicates("trial")
        for rec in firsts.to_dict("records"):
            axes.setdefault(
                rec["trial"],
                {
                    k: rec[k]
                    for k in ("dataset", "backbone", "pretraining", "regime", "seed", "task", "timm_name")
                },
            )
    for name, status in statuses.items():
        if name not in axes:
            given = status.get("axes")
            axes[name] = dict(given) if isinstance(given, Mapping) else _parse_name(name)
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
                seed=int(seed) if _finite(seed) else None,
                task=task,
                timm_name=str(ax.get("timm_name") or ""),
                state=state,
                metric=metric,
                final=final,
                final_iter=final_iter,
                last_iter=last_iter,
                message=str(status.get("message") or ""),
                attempts=int(status.get("attempts") or 0),
                train_fraction=float(fraction) if _finite(fraction) else fraction_of_name(name),
            )
        )
    return out


def _ordered(items: Iterable[Any], first: Sequence[Any]) -> list[Any]:
    seen = list(dict.fromkeys(items))
    return [x for x in first if x in seen] + [x for x in seen if x not in first]


# ---------------------------------------------------------------------------------------
# Table 2


def build_cells(
    trials: Sequence[TrialInfo],
    paper: pd.DataFrame,
    study: Study | None = None,
) -> tuple[list[RowKey], list[str], list[Cell]]:
    """Rows (paper order first), datasets (paper order first) and every (row, dataset) cell."""
    paper_rows = list(dict.fromkeys(zip(paper["backbone"], paper["pretraining"], paper["regime"])))
    if study is not None:
        by_id = {b.id: b for b in study.backbones}
        seen_rows = [(by_id[r.backbone].arch, by_id[r.backbone].pretraining, r.regime) for r in study.rows]
        seen_ds = [d.id for d in study.datasets]
    else:
        seen_rows, seen_ds = [], []
    seen_rows += [t.row for t in trials]
    seen_ds += [t.dataset for t in trials]
    rows = _ordered(seen_rows, paper_rows)
    datasets = _ordered(seen_ds, PAPER_DATASETS)
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
            cells.append(cell)
    for d in datasets:  # best per column (all headline metrics are higher-is-better)
        col = [c for c in cells if c.dataset == d and c.mean is not None]
        if col:
            top = max(round(c.mean, 2) for c in col)
            for c in col:
                c.best = round(c.mean, 2) == top
    return rows, datasets, cells


def cells_frame(cells: Sequence[Cell]) -> pd.DataFrame:
    """table2.csv: one row per (row, dataset)."""
    recs = []
    for c in cells:
        b, p, r = row_label(c.row)
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
                **_ci_columns(c.ci),
                "paper_in_ci": c.ci.contains(c.paper) if c.ci is not None else None,
            }
        )
    frame = pd.DataFrame.from_records(recs)
    if len(frame):
        frame["iter"] = frame["iter"].astype("Int64")
    return frame


def _ci_columns(ci: Interval | None) -> dict[str, Any]:
    """The interval's CSV columns (empty where there is none)."""
    return {
        "ci_low": ci.low if ci else None,
        "ci_high": ci.high if ci else None,
        "ci_level": ci.level if ci else None,
        "ci_method": ci.method if ci else None,
        "ci_resamples": ci.resamples if ci else None,
        "ci_images": ci.images if ci else None,
    }


def paired_deltas(
    cells: Sequence[Cell],
    reference: str = "supervised",
    intervals: Mapping[tuple[str, str, str, str, str], Interval] | None = None,
) -> pd.DataFrame:
    """Per-seed differences between two pretrainings on the same backbone, regime, dataset.

    ``other - reference`` for each seed both finished (e.g. dinov3 - supervised), then mean
    and sample std over seeds; the paper's difference beside it. ``intervals`` (from
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
            if pre == ref:
                continue
            common = sorted(set(a.seeds) & set(b.seeds))
            if not common:
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
                    **_ci_columns(ci),
                    "excludes_zero": ci.excludes_zero() if ci is not None else None,
                    "paper_in_ci": ci.contains(paper) if ci is not None else None,
                }
            )
    cols = [
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
        *_ci_columns(None),
        "excludes_zero",
        "paper_in_ci",
    ]
    return pd.DataFrame.from_records(recs, columns=cols)


# ---------------------------------------------------------------------------------------
# learning curves

CURVE_SIZE = (8.0, 5.0)  # inches
CURVE_DPI = 100  # -> 800 x 500 px
_COLOURS = {
    ("convnext_t", "supervised"): "tab:blue",  # ImageNet
    ("convnext_t", "dinov3"): "tab:orange",  # DINOv3
    ("resnet50_gn", "supervised"): "tab:green",  # ResNet-50
}
_SPARE = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:red", "tab:gray")
_STYLES = {"full": "-", "frozen": "--"}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_curves(
    results: pd.DataFrame,
    trials: Sequence[TrialInfo],
    rows: Sequence[RowKey],
    dataset: str,
    metric: str,
    path: Path,
) -> Path:
    """``curves_<dataset>.png``: val headline metric vs iteration, one line per row.

    Colour = backbone/pretraining (ImageNet, DINOv3, ResNet-50), line style = regime
    (full solid, frozen dashed); several seeds draw their mean with a min-max band.
    """
    # The Agg canvas directly (no pyplot): no global backend switch, safe in threads/notebooks.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=CURVE_SIZE, dpi=CURVE_DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    spare = iter(_SPARE * 10)
    colours = dict(_COLOURS)
    drawn = 0
    data = results
    if len(results):
        data = results[(results["dataset"] == dataset) & (results["metric"] == metric)]
    for row in rows:
        names = [t.trial for t in trials if t.row == row and t.dataset == dataset]
        sub = data[data["trial"].isin(names)] if len(data) else data
        if sub is None or sub.empty:
            continue
        wide = sub.pivot_table(index="iter", columns="trial", values="value", aggfunc="last").sort_index()
        mean = wide.mean(axis=1)
        key = (row[0], row[1])
        if key not in colours:
            colours[key] = next(spare)
        b, p, r = row_label(row)
        states = {t.state for t in trials if t.trial in wide.columns}
        note = "" if states <= {"finished"} else " (" + ", ".join(sorted(states - {"finished"})) + ")"
        n = wide.shape[1]
        label = f"{b} · {p} · {r}" + (f" (n={n})" if n > 1 else "") + note
        ax.plot(
            mean.index,
            mean.values,
            _STYLES.get(row[2], ":"),
            color=colours[key],
            marker="o",
            markersize=3,
            linewidth=1.6,
            label=label,
        )
        if n > 1:
            ax.fill_between(wide.index, wide.min(axis=1), wide.max(axis=1), color=colours[key], alpha=0.15)
        drawn += 1
    ax.set_title(f"{dataset_label(dataset)} — {metric} (validation) vs iteration")
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no evaluation points yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=CURVE_DPI)
    return path


# ---------------------------------------------------------------------------------------
# label efficiency: the headline metric against the training fraction

FRACTION_COLUMNS: tuple[str, ...] = (
    "dataset",
    "backbone",
    "pretraining",
    "regime",
    "train_fraction",
    "metric",
    "mean",
    "std",
    "min",
    "max",
    "n_seeds",
    "status",
    "seeds",
    "trials",
)


def has_fractions(trials: Sequence[TrialInfo]) -> bool:
    """Whether the experiment has the label-efficiency axis (a trial below 1.0)."""
    return any(t.train_fraction != 1.0 for t in trials)


def fraction_frame(
    trials: Sequence[TrialInfo], rows: Sequence[RowKey], datasets: Sequence[str], metric_of: Mapping[str, str]
) -> pd.DataFrame:
    """fractions.csv: one line per (dataset, row, fraction): the final headline value over the
    seeds that finished (mean, sample std, min, max), as Table 2's cells."""
    groups: dict[tuple[str, RowKey, float], list[TrialInfo]] = {}
    for t in trials:
        groups.setdefault((t.dataset, t.row, t.train_fraction), []).append(t)
    fractions = sorted({t.train_fraction for t in trials})
    recs = []
    for d in datasets:
        for row in rows:
            for f in fractions:
                ts = sorted(groups.get((d, row, f), []), key=lambda t: (t.seed is None, t.seed or 0))
                if not ts:
                    continue
                fin = [t for t in ts if t.state == "finished" and t.final is not None]
                vals = [float(t.final) for t in fin]  # type: ignore[arg-type]
                status = (
                    ("finished" if len(fin) == len(ts) else "partial")
                    if fin
                    else next(
                        (s for s in ("running", "failed", "finished") if any(t.state == s for t in ts)),
                        "missing",
                    )
                )
                recs.append(
                    {
                        "dataset": d,
                        "backbone": row[0],
                        "pretraining": row[1],
                        "regime": row[2],
                        "train_fraction": f,
                        "metric": metric_of.get(d, ""),
                        "mean": sum(vals) / len(vals) if vals else None,
                        "std": pd.Series(vals).std(ddof=1) if len(vals) > 1 else (0.0 if vals else None),
                        "min": min(vals) if vals else None,
                        "max": max(vals) if vals else None,
                        "n_seeds": len(vals),
                        "status": status,
                        "seeds": ";".join(f"{t.seed}:{t.final:.4f}" for t in fin),
                        "trials": ";".join(t.trial for t in ts),
                    }
                )
    return pd.DataFrame.from_records(recs, columns=list(FRACTION_COLUMNS))


def plot_fractions(
    frame: pd.DataFrame, rows: Sequence[RowKey], dataset: str, metric: str, path: Path
) -> Path:
    """``fractions_<dataset>.png``: final headline metric vs training fraction (log x axis, ticks
    at the study's fractions), one line per row: colours and line styles as the learning
    curves; several seeds draw their mean with a min-max band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    fig = Figure(figsize=CURVE_SIZE, dpi=CURVE_DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    spare = iter(_SPARE * 10)
    colours = dict(_COLOURS)
    sub = frame[(frame["dataset"] == dataset) & frame["mean"].notna()] if len(frame) else frame
    drawn = 0
    for row in rows:
        line = sub[(sub["backbone"] == row[0]) & (sub["pretraining"] == row[1]) & (sub["regime"] == row[2])]
        if line.empty:
            continue
        line = line.sort_values("train_fraction")
        key = (row[0], row[1])
        if key not in colours:
            colours[key] = next(spare)
        b, p, r = row_label(row)
        n = int(line["n_seeds"].max())
        ax.plot(
            line["train_fraction"],
            line["mean"],
            _STYLES.get(row[2], ":"),
            color=colours[key],
            marker="o",
            markersize=4,
            linewidth=1.6,
            label=f"{b} · {p} · {r}" + (f" (n={n})" if n > 1 else ""),
        )
        if n > 1:
            ax.fill_between(
                line["train_fraction"].astype(float),
                line["min"].astype(float),
                line["max"].astype(float),
                color=colours[key],
                alpha=0.15,
            )
        drawn += 1
    ax.set_xscale("log")
    ticks = sorted(set(frame["train_fraction"])) if len(frame) else [1.0]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.set_title(f"{dataset_label(dataset)} — {metric} (validation, final) vs training fraction")
    ax.set_xlabel("share of the training split (nested, class-stratified subsets)")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished trial yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=CURVE_DPI)
    return path


def fractions_markdown(frame: pd.DataFrame, rows: Sequence[RowKey], dataset: str) -> str:
    """One dataset's label-efficiency table: rows x fractions, ``mean ± std`` (or a marker)."""
    sub = frame[frame["dataset"] == dataset]
    fractions = sorted(set(sub["train_fraction"]))
    at = {
        (r["backbone"], r["pretraining"], r["regime"], r["train_fraction"]): r for r in sub.to_dict("records")
    }
    body = []
    for row in rows:
        if not any((*row, f) in at for f in fractions):
            continue
        cells = []
        for f in fractions:
            r = at.get((*row, f))
            if r is None:
                cells.append(MISSING)
            elif _finite(r["mean"]):
                text = f"{r['mean']:.2f}"
                if r["n_seeds"] > 1:
                    text += f" ± {r['std']:.2f} (n={r['n_seeds']})"
                if r["status"] == "partial":
                    text += " [partial]"
                cells.append(text)
            else:
                cells.append({"running": RUNNING, "failed": FAILED}.get(r["status"], MISSING))
        body.append([*row_label(row), *cells])
    return _md_table(["Backbone", "Pretraining", "Regime", *(f"{f:g}" for f in fractions)], body)


# ---------------------------------------------------------------------------------------
# cost


def _wall_seconds(wall: pd.Series) -> float:
    """Total wall time of rows in write order: a restarted attempt starts its clock at 0
    again, so sum the maximum of each run of non-decreasing times."""
    w = wall.astype(float).reset_index(drop=True)
    if w.empty:
        return 0.0
    segment = (w < w.shift(fill_value=w.iloc[0]) - 1e-9).cumsum()
    return float(w.groupby(segment).max().sum())


def cost_table(raw: pd.DataFrame, trials: Sequence[TrialInfo], study: Study | None = None) -> pd.DataFrame:
    """Per trial: wall time (all attempts), GPU-hours = wall x workers x GPUs/worker, images/s."""
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
    cols = [
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
    ]
    return pd.DataFrame.from_records(recs, columns=cols)


# ---------------------------------------------------------------------------------------
# markdown


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = [
        "| " + " | ".join(_md_escape(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(x: Any, spec: str = ".2f", empty: str = "") -> str:
    return format(float(x), spec) if _finite(x) else empty


def table2_markdown(rows: Sequence[RowKey], datasets: Sequence[str], cells: Sequence[Cell]) -> str:
    """Table 2 in the paper's layout: rows backbone / pretraining / regime, columns datasets."""
    at = {(c.row, c.dataset): c for c in cells}
    header = ["Backbone", "Pretraining", "Regime"]
    for d in datasets:
        metric = next((c.metric for c in cells if c.dataset == d and c.metric), "")
        header.append(f"{dataset_label(d)} ({metric})" if metric else dataset_label(d))
    body = [[*row_label(r), *(at[(r, d)].text() for d in datasets)] for r in rows]
    return _md_table(header, body)


def _markdown(
    result_name: str,
    experiment: str,
    rows: Sequence[RowKey],
    datasets: Sequence[str],
    cells: Sequence[Cell],
    paired: pd.DataFrame,
    curves: Mapping[str, Path],
    cost: pd.DataFrame,
    trials: Sequence[TrialInfo],
    counts: Mapping[str, int],
    boot: Bootstrap | None = None,
    fractions: pd.DataFrame | None = None,
    fraction_plots: Mapping[str, Path] | None = None,
) -> str:
    fraction_plots = fraction_plots or {}
    out = [f"# raybench report — study `{result_name}`", ""]
    out.append(f"Experiment: `{experiment}`  ")
    out.append(f"Generated: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  ")
    states = ("finished", "running", "failed", "missing")
    summary = ", ".join(f"{counts[s]} {s}" for s in states if counts.get(s))
    out.append(f"Trials: {sum(counts.values())} ({summary or 'none'})")
    out += ["", "## Table 2 — validation split, final iteration", ""]
    out.append(
        "Each cell: ours at the final iteration (paper's value, ours − paper). Several seeds: "
        "mean ± sample std (n = seeds). **Bold**: best of the column. "
        f"`{RUNNING} @ iter N`: not finished (last evaluation in brackets); `{FAILED}`: "
        f"the trial failed; `{MISSING}`: never started; `[+k state]`: seeds not finished yet."
    )
    out += ["", table2_markdown(rows, datasets, cells), ""]
    if boot is not None:
        out += [_bootstrap_note(boot, cells), ""]
    multi = [c for c in cells if c.n_seeds > 1]
    if multi:
        out += ["## Seeds", ""]
        out.append(
            _md_table(
                ["Backbone", "Pretraining", "Regime", "Dataset", "n", "mean ± std", "per seed"],
                [
                    [
                        *row_label(c.row),
                        dataset_label(c.dataset),
                        c.n_seeds,
                        f"{c.mean:.2f} ± {c.std:.2f}",
                        ", ".join(f"s{s}: {v:.2f}" for s, v in sorted(c.seeds.items())),
                    ]
                    for c in multi
                ],
            )
        )
        out.append("")
    if len(paired):
        out += ["## Paired deltas (same backbone, regime, dataset and seed)", ""]
        out.append(
            _md_table(
                [
                    "Backbone",
                    "Regime",
                    "Dataset",
                    "Δ",
                    "n",
                    "mean ± std",
                    "per seed",
                    "paper Δ",
                    f"{_pct(boot)} CI",
                    "CI excludes 0",
                    "paper Δ in CI",
                ],
                [
                    [
                        ARCH_NAMES.get(r["backbone"], r["backbone"]),
                        r["regime"],
                        dataset_label(r["dataset"]),
                        r["comparison"],
                        r["n_pairs"],
                        f"{r['mean']:+.2f}" + (f" ± {r['std']:.2f}" if _finite(r["std"]) else ""),
                        ", ".join(
                            f"s{s} {float(v):+.2f}"
                            for s, v in (p.split(":") for p in r["per_seed"].split(";") if p)
                        ),
                        _signed(r["paper_delta"]) if _finite(r["paper_delta"]) else "—",
                        f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]" if _finite(r["ci_low"]) else "—",
                        _yes_no(r["excludes_zero"]),
                        _yes_no(r["paper_in_ci"]),
                    ]
                    for r in paired.to_dict("records")
                ],
            )
        )
        out.append("")
    out += ["## Learning curves", ""]
    out.append(
        "Validation headline metric vs iteration. Colour: backbone/pretraining "
        "(blue ImageNet ConvNeXt-T, orange DINOv3 ConvNeXt-T, green ResNet-50); "
        "line: solid full fine-tuning, dashed frozen backbone."
    )
    out.append("")
    for d, p in curves.items():
        out += [f"### {dataset_label(d)}", "", f"![{dataset_label(d)} learning curves]({p.name})", ""]
    if fractions is not None and len(fractions):
        out += ["## Label efficiency — headline metric vs training fraction", ""]
        out.append(
            "Each trial trained on a nested, class-stratified share of the training split with the "
            "same recipe (iterations and batch unchanged); final validation value, mean ± sample std "
            "over seeds. Table 2 above uses the whole split (fraction 1) only."
        )
        out.append("")
        f_rows = _ordered(
            [*rows, *zip(fractions["backbone"], fractions["pretraining"], fractions["regime"])], rows
        )
        for d in _ordered([*datasets, *fractions["dataset"]], datasets):
            out += [f"### {dataset_label(d)}", "", fractions_markdown(fractions, f_rows, d), ""]
            if d in fraction_plots:
                out += [f"![{dataset_label(d)} label efficiency]({fraction_plots[d].name})", ""]
    out += ["## Cost per trial", ""]
    if len(cost):
        body = [
            [
                r["trial"],
                r["state"],
                "" if r["iters"] is None or pd.isna(r["iters"]) else int(r["iters"]),
                _fmt(r["wall_time_h"], ".3f"),
                f"{int(r['workers'])} x {r['gpus_per_worker']:g}",
                _fmt(r["gpu_hours"], ".3f"),
                _fmt(r["imgs_per_s"], ".1f", "—"),
            ]
            for r in cost.to_dict("records")
        ]
        body.append(
            [
                "**total**",
                "",
                "",
                _fmt(cost["wall_time_h"].sum(), ".3f"),
                "",
                _fmt(cost["gpu_hours"].sum(), ".3f"),
                "",
            ]
        )
        out.append(_md_table(["Trial", "State", "Iters", "Wall h", "Workers x GPUs", "GPU-h", "img/s"], body))
    else:
        out.append("No trial has run yet.")
    out.append("")
    problems = [t for t in trials if t.state == "failed"]
    if problems:
        out += ["## Failed trials", ""]
        for t in problems:
            where = f" @ iter {t.last_iter}" if t.last_iter is not None else ""
            out.append(f"- `{t.trial}`{where} (attempts: {t.attempts}): {t.message or 'no message'}")
        out.append("")
    out += [
        "Files: `table2.csv` (one row per cell), `paired_deltas.csv`, `cost.csv`, "
        "`curves_<dataset>.png`"
        + (", `fractions.csv`, `fractions_<dataset>.png`" if fractions is not None and len(fractions) else "")
        + ". Schema and markers: docs/report.md.",
        "",
    ]
    return "\n".join(out)


def _pct(boot: Bootstrap | None) -> str:
    return f"{(boot.level if boot else LEVEL) * 100:g} %"


def _yes_no(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return "yes" if bool(x) else "no"


def _bootstrap_note(boot: Bootstrap, cells: Sequence[Cell]) -> str:
    """The paragraph under Table 2 saying how its intervals were made and which cells lack one."""
    done = [c for c in cells if c.mean is not None]
    have = [c for c in done if c.ci is not None]
    if boot.resamples < 1:
        return "No bootstrap intervals (turned off: 0 resamples)."
    if done and not have and not boot.notes:
        return (
            "No bootstrap intervals: no trial stored per-image records of its final evaluation "
            "(docs/report.md, *Bootstrap intervals*)."
        )
    text = (
        f"`[low, high]`: {_pct(boot)} percentile bootstrap interval of the cell, {boot.resamples} "
        f"resamples (seed {boot.seed}) of the validation images — and of the seeds, where a cell "
        f"has several — recomputed from each trial's per-image records of its final evaluation "
        f"(docs/report.md). {len(have)} of {len(done)} cells with a value have one"
    )
    missing = [c for c in done if c.ci is None]
    if missing:
        names = ", ".join(f"{dataset_label(c.dataset)} {' / '.join(row_label(c.row))}" for c in missing[:6])
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        text += f"; none (no records of the final evaluation) for {names}{more}"
    text += "."
    if boot.notes:
        text += " Records not used: " + "; ".join(boot.notes) + "."
    return text


# ---------------------------------------------------------------------------------------
# entry point


def build_report(
    experiment: str,
    out_dir: Path,
    study: Study | None = None,
    paper_csv: Path | None = None,
    *,
    wandb: bool | None = None,
    wandb_project: str | None = None,
    wandb_entity: str | None = None,
    bootstrap_resamples: int = RESAMPLES,
    bootstrap_seed: int = 0,
) -> ReportResult:
    """Write report.md, table2.csv, paired_deltas.csv, cost.csv and curves_<dataset>.png.

    ``experiment``: the experiment folder or URI (every trial below it, any depth).
    ``study``: adds never-started trials (missing) and fixes each dataset's headline
    metric; without it the store's ``status.json`` says the metric. ``wandb``: also
    publish a W&B Report (saved only with ``WANDB_API_KEY``, else a one-line skip
    message); False = do not try. The local report is always written first.
    ``bootstrap_resamples`` / ``bootstrap_seed``: the intervals' resamples (0 = none) and seed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = read_results(experiment, dedupe_rows=False)
    results = dedupe(raw)
    statuses = read_status(experiment)
    trials = collect_trials(results, statuses, study)
    datasets_known = {t.dataset for t in trials} | ({d.id for d in study.datasets} if study else set())
    paper = load_paper(paper_csv, datasets_known)
    # Table 2, its intervals and the learning curves: the whole training split only.
    full = [t for t in trials if t.train_fraction == 1.0]
    rows, datasets, cells = build_cells(full, paper, study)
    boot = bootstrap_report(
        cells, read_eval_records(experiment), resamples=bootstrap_resamples, seed=bootstrap_seed
    )
    warn_notes(boot)
    for c in cells:
        c.ci = boot.cells.get((c.row, c.dataset))
    table2 = cells_frame(cells)
    paired = paired_deltas(cells, intervals=boot.pairs)
    cost = cost_table(raw, trials, study)
    if len(cost):  # the table's order: dataset column, then row, then seed
        rank = {(r, d): i for i, (r, d) in enumerate((r, d) for d in datasets for r in rows)}
        cost["_k"] = [
            rank.get(((b, p, g), d), len(rank))
            for b, p, g, d in zip(cost["backbone"], cost["pretraining"], cost["regime"], cost["dataset"])
        ]
        cost = cost.sort_values(["_k", "seed"], kind="stable").drop(columns="_k").reset_index(drop=True)
    curves: dict[str, Path] = {}
    for d in datasets:
        metric = next((c.metric for c in cells if c.dataset == d and c.metric), "")
        curves[d] = plot_curves(results, full, rows, d, metric, out_dir / f"curves_{_safe(d)}.png")
    fractions = pd.DataFrame(columns=list(FRACTION_COLUMNS))
    fraction_plots: dict[str, Path] = {}
    if has_fractions(trials):
        f_rows = _ordered([*rows, *(t.row for t in trials)], rows)
        f_sets = _ordered([*datasets, *(t.dataset for t in trials)], datasets)
        metric_of = {d: next((t.metric for t in trials if t.dataset == d and t.metric), "") for d in f_sets}
        fractions = fraction_frame(trials, f_rows, f_sets, metric_of)
        fractions.to_csv(out_dir / "fractions.csv", index=False)
        for d in f_sets:
            if (fractions["dataset"] == d).any():
                path = out_dir / f"fractions_{_safe(d)}.png"
                fraction_plots[d] = plot_fractions(fractions, f_rows, d, metric_of[d], path)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    if study is not None:
        name = study.name
    elif not results.empty:
        name = str(results["study"].mode().iloc[0])
    else:
        name = str(experiment).rstrip("/").rsplit("/", 1)[-1]
    table2_csv, cost_csv = out_dir / "table2.csv", out_dir / "cost.csv"
    table2.to_csv(table2_csv, index=False)
    cost.to_csv(cost_csv, index=False)
    paired.to_csv(out_dir / "paired_deltas.csv", index=False)
    md = out_dir / "report.md"
    text = _markdown(
        name,
        str(experiment),
        rows,
        datasets,
        cells,
        paired,
        curves,
        cost,
        trials,
        counts,
        boot,
        fractions,
        fraction_plots,
    )
    md.write_text(text)
    result = ReportResult(
        out_dir=out_dir,
        markdown=md,
        table2=table2,
        table2_csv=table2_csv,
        cost=cost,
        cost_csv=cost_csv,
        paired=paired,
        curves=curves,
        trials=trials,
        cells=cells,
        counts=counts,
        study=name,
        bootstrap=boot,
        fractions=fractions,
        fraction_plots=fraction_plots,
    )
    if wandb is not False:
        from raybench.results.wandb_report import publish_wandb_report

        result.wandb_url = publish_wandb_report(result, project=wandb_project, entity=wandb_entity)
    return result


__all__ = [
    "Cell",
    "ReportResult",
    "TrialInfo",
    "build_cells",
    "build_report",
    "collect_trials",
    "cost_table",
    "fraction_frame",
    "load_paper",
    "paired_deltas",
    "plot_curves",
    "plot_fractions",
    "table2_markdown",
]
