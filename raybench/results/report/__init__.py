"""The study's report: Table 2 next to the paper's numbers, learning curves, cost.

Why it reads only the results store (Parquet parts + ``status.json``) and never Ray or W&B:
a report must be buildable from the experiment folder alone — while the sweep still runs,
after a crash, on a laptop that copied the folder, or straight from ``s3://``. The study
file is optional: it adds the trials that never started (shown as missing) and names each
backbone's pretraining data.

Values are taken as the evaluators write them (percentages, 0-100, like Detectron2), and
each cell uses the value at the trial's **final** evaluation, as the paper does (not the
best one). Where the trials stored per-image records of that evaluation, every cell and paired
delta also gets a 95 % bootstrap interval (:mod:`raybench.results.bootstrap`).

Where each piece lives:

- :mod:`.collect`: the trials (axes, state, final value) and the paper's Table 2;
- :mod:`.labels`: names and colours of rows, derived from the study's backbones;
- :mod:`.cells`: Table 2's cells, ``table2.csv``, paired deltas;
- :mod:`.plots`: learning curves and label-efficiency figures;
- :mod:`.fractions`: the label-efficiency table (``fractions.csv``);
- :mod:`.cost`: cost per trial (``cost.csv``);
- :mod:`.markdown`: ``report.md``, one function per section;
- :mod:`.build`: :func:`build_report`, which runs them in that order.

Every public name is importable from ``raybench.results.report``; docs/report.md describes
the outputs.
"""

from __future__ import annotations

from raybench.results.report.build import ReportResult, build_report
from raybench.results.report.cells import (
    FAILED,
    MISSING,
    PAIRED_COLUMNS,
    RUNNING,
    Cell,
    build_cells,
    cells_frame,
    paired_deltas,
)
from raybench.results.report.collect import (
    PAPER_CSV,
    PAPER_DATASETS,
    RowKey,
    TrialInfo,
    collect_trials,
    fraction_of_name,
    load_paper,
)
from raybench.results.report.cost import COST_COLUMNS, cost_table
from raybench.results.report.fractions import FRACTION_COLUMNS, fraction_frame, has_fractions
from raybench.results.report.labels import (
    ARCH_NAMES,
    DATASET_NAMES,
    METHOD_NAMES,
    PALETTE,
    Legend,
    dataset_label,
    legend_for,
    pretraining_label,
    row_label,
)
from raybench.results.report.markdown import fractions_markdown, render_markdown, table2_markdown
from raybench.results.report.plots import (
    CURVE_DPI,
    CURVE_SIZE,
    Line,
    curve_lines,
    fraction_lines,
    plot_curves,
    plot_fractions,
)

__all__ = [
    "ARCH_NAMES",
    "COST_COLUMNS",
    "CURVE_DPI",
    "CURVE_SIZE",
    "DATASET_NAMES",
    "FAILED",
    "FRACTION_COLUMNS",
    "METHOD_NAMES",
    "MISSING",
    "PAIRED_COLUMNS",
    "PALETTE",
    "PAPER_CSV",
    "PAPER_DATASETS",
    "RUNNING",
    "Cell",
    "Legend",
    "Line",
    "ReportResult",
    "RowKey",
    "TrialInfo",
    "build_cells",
    "build_report",
    "cells_frame",
    "collect_trials",
    "cost_table",
    "curve_lines",
    "dataset_label",
    "fraction_frame",
    "fraction_lines",
    "fraction_of_name",
    "fractions_markdown",
    "has_fractions",
    "legend_for",
    "load_paper",
    "paired_deltas",
    "plot_curves",
    "plot_fractions",
    "pretraining_label",
    "render_markdown",
    "row_label",
    "table2_markdown",
]
