"""``build_report``: read the experiment's store, build every table and figure, write them.

The order of work: trials and the paper's table (:mod:`.collect`), the legend
(:mod:`.labels`), Table 2's cells and their bootstrap intervals (:mod:`.cells`,
:mod:`raybench.results.bootstrap`), paired deltas, cost (:mod:`.cost`), curves and label
efficiency (:mod:`.plots`, :mod:`.fractions`), then ``report.md`` (:mod:`.markdown`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from raybench.results.bootstrap import RESAMPLES, Bootstrap, bootstrap_report, warn_notes
from raybench.results.report.cells import Cell, build_cells, cells_frame, paired_deltas
from raybench.results.report.collect import (
    RowKey,
    TrialInfo,
    collect_trials,
    load_paper,
    ordered,
    state_counts,
)
from raybench.results.report.cost import cost_table, in_table_order
from raybench.results.report.fractions import FRACTION_COLUMNS, fraction_frame, has_fractions
from raybench.results.report.labels import Legend, legend_for
from raybench.results.report.markdown import render_markdown
from raybench.results.report.plots import curve_lines, fraction_lines, plot_curves, plot_fractions, safe_name
from raybench.results.store import dedupe, read_eval_records, read_results, read_status

if TYPE_CHECKING:
    from raybench.study import Study


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
    #: the experiment read, Table 2's rows and datasets in order, and how rows are named / coloured
    experiment: str = ""
    rows: list[RowKey] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    legend: Legend | None = None
    #: per dataset, the entries of its learning-curve legend, top to bottom
    curve_legends: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.rows:
            self.rows = list(dict.fromkeys(c.row for c in self.cells))
        if not self.datasets:
            self.datasets = list(dict.fromkeys(c.dataset for c in self.cells))
        if self.legend is None:
            self.legend = legend_for(self.rows, trials=self.trials)


def _study_name(experiment: str, study: Study | None, results: pd.DataFrame) -> str:
    if study is not None:
        return study.name
    if not results.empty:
        return str(results["study"].mode().iloc[0])
    return str(experiment).rstrip("/").rsplit("/", 1)[-1]


def _fraction_outputs(
    trials: list[TrialInfo], rows: list[RowKey], datasets: list[str], legend: Legend, out_dir: Path
) -> tuple[pd.DataFrame, dict[str, Path]]:
    """fractions.csv and fractions_<dataset>.png (nothing without the label-efficiency axis)."""
    if not has_fractions(trials):
        return pd.DataFrame(columns=list(FRACTION_COLUMNS)), {}
    f_rows = ordered([*rows, *(t.row for t in trials)], rows)
    f_sets = ordered([*datasets, *(t.dataset for t in trials)], datasets)
    metric_of = {d: next((t.metric for t in trials if t.dataset == d and t.metric), "") for d in f_sets}
    frame = fraction_frame(trials, f_rows, f_sets, metric_of)
    frame.to_csv(out_dir / "fractions.csv", index=False)
    plots = {
        d: plot_fractions(
            fraction_lines(frame, f_rows, d, legend),
            frame["train_fraction"],
            d,
            metric_of[d],
            out_dir / f"fractions_{safe_name(d)}.png",
        )
        for d in f_sets
        if (frame["dataset"] == d).any()
    }
    return frame, plots


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
    ``study``: adds never-started trials (missing), fixes each dataset's headline metric and
    names each backbone's pretraining data; without it the store's ``status.json`` says the
    metric. ``wandb``: also publish a W&B Report (saved only with ``WANDB_API_KEY``, else a
    one-line skip message); False = do not try. The local report is always written first.
    ``bootstrap_resamples`` / ``bootstrap_seed``: the intervals' resamples (0 = none) and seed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = read_results(experiment, dedupe_rows=False)
    results = dedupe(raw)
    trials = collect_trials(results, read_status(experiment), study)
    known = {t.dataset for t in trials} | ({d.id for d in study.datasets} if study else set())
    paper = load_paper(paper_csv, known)
    # Table 2, its intervals and the learning curves: the whole training split only.
    full = [t for t in trials if t.train_fraction == 1.0]
    rows, datasets, cells = build_cells(full, paper, study)
    legend = legend_for(ordered([*rows, *(t.row for t in trials)], rows), study, trials, paper)
    boot = bootstrap_report(
        cells, read_eval_records(experiment), resamples=bootstrap_resamples, seed=bootstrap_seed
    )
    warn_notes(boot)
    for c in cells:
        c.ci = boot.cells.get((c.row, c.dataset))
    curves: dict[str, Path] = {}
    curve_legends: dict[str, list[str]] = {}
    for d in datasets:
        metric = next((c.metric for c in cells if c.dataset == d and c.metric), "")
        lines = curve_lines(results, full, rows, d, metric, legend)
        curves[d] = plot_curves(lines, d, metric, out_dir / f"curves_{safe_name(d)}.png")
        curve_legends[d] = [ln.label for ln in lines]
    fractions, fraction_plots = _fraction_outputs(trials, rows, datasets, legend, out_dir)
    result = ReportResult(
        out_dir=out_dir,
        markdown=out_dir / "report.md",
        table2=cells_frame(cells, legend),
        table2_csv=out_dir / "table2.csv",
        cost=in_table_order(cost_table(raw, trials, study), rows, datasets),
        cost_csv=out_dir / "cost.csv",
        paired=paired_deltas(cells, intervals=boot.pairs),
        curves=curves,
        trials=trials,
        cells=cells,
        counts=state_counts(trials),
        study=_study_name(experiment, study, results),
        bootstrap=boot,
        fractions=fractions,
        fraction_plots=fraction_plots,
        experiment=str(experiment),
        rows=rows,
        datasets=datasets,
        legend=legend,
        curve_legends=curve_legends,
    )
    result.table2.to_csv(result.table2_csv, index=False)
    result.cost.to_csv(result.cost_csv, index=False)
    result.paired.to_csv(out_dir / "paired_deltas.csv", index=False)
    result.markdown.write_text(render_markdown(result))
    if wandb is not False:
        from raybench.results.wandb_report import publish_wandb_report

        result.wandb_url = publish_wandb_report(result, project=wandb_project, entity=wandb_entity)
    return result


__all__ = ["ReportResult", "build_report"]
