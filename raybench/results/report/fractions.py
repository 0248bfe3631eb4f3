"""Label efficiency: the final headline metric against the training fraction, for studies
with ``train_fractions`` (``fractions.csv``; the figure is :func:`~.plots.plot_fractions`,
the Markdown table :func:`~.markdown.fractions_markdown`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from raybench.results.report.collect import RowKey, TrialInfo

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


def _status(ts: Sequence[TrialInfo], finished: int) -> str:
    """A point's state: finished / partial by its finished seeds, else the first state any
    seed is in (running, failed, finished without the metric), else missing."""
    if finished:
        return "finished" if finished == len(ts) else "partial"
    return next((s for s in ("running", "failed", "finished") if any(t.state == s for t in ts)), "missing")


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
                        "status": _status(ts, len(fin)),
                        "seeds": ";".join(f"{t.seed}:{t.final:.4f}" for t in fin),
                        "trials": ";".join(t.trial for t in ts),
                    }
                )
    return pd.DataFrame.from_records(recs, columns=list(FRACTION_COLUMNS))


__all__ = ["FRACTION_COLUMNS", "fraction_frame", "has_fractions"]
