"""``report.md``: one function per section, each turning the built report
(:class:`~raybench.results.report.build.ReportResult`) into its lines."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from raybench.results.bootstrap import LEVEL, Bootstrap
from raybench.results.report.cells import FAILED, MISSING, RUNNING, Cell, signed
from raybench.results.report.collect import RowKey, finite, ordered
from raybench.results.report.labels import Legend, arch_label, dataset_label, legend_for

if TYPE_CHECKING:
    from raybench.results.report.build import ReportResult


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (``|`` in cells escaped)."""

    def esc(text: Any) -> str:
        return str(text).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(x: Any, spec: str = ".2f", empty: str = "") -> str:
    return format(float(x), spec) if finite(x) else empty


def _pct(boot: Bootstrap | None) -> str:
    return f"{(boot.level if boot else LEVEL) * 100:g} %"


def _yes_no(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return "yes" if bool(x) else "no"


def table2_markdown(
    rows: Sequence[RowKey], datasets: Sequence[str], cells: Sequence[Cell], legend: Legend | None = None
) -> str:
    """Table 2 in the paper's layout: rows backbone / pretraining / regime, columns datasets."""
    legend = legend or legend_for(rows)
    at = {(c.row, c.dataset): c for c in cells}
    header = ["Backbone", "Pretraining", "Regime"]
    for d in datasets:
        metric = next((c.metric for c in cells if c.dataset == d and c.metric), "")
        header.append(f"{dataset_label(d)} ({metric})" if metric else dataset_label(d))
    body = [[*legend.row(r), *(at[(r, d)].text() for d in datasets)] for r in rows]
    return md_table(header, body)


def fractions_markdown(
    frame: pd.DataFrame, rows: Sequence[RowKey], dataset: str, legend: Legend | None = None
) -> str:
    """One dataset's label-efficiency table: rows x fractions, ``mean ± std`` (or a marker)."""
    legend = legend or legend_for(rows)
    sub = frame[frame["dataset"] == dataset]
    fractions = sorted(set(sub["train_fraction"]))
    at = {
        (r["backbone"], r["pretraining"], r["regime"], r["train_fraction"]): r for r in sub.to_dict("records")
    }
    body = []
    for row in rows:
        if not any((*row, f) in at for f in fractions):
            continue
        body.append([*legend.row(row), *(_fraction_cell(at.get((*row, f))) for f in fractions)])
    return md_table(["Backbone", "Pretraining", "Regime", *(f"{f:g}" for f in fractions)], body)


def _fraction_cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return MISSING
    if not finite(r["mean"]):
        return {"running": RUNNING, "failed": FAILED}.get(r["status"], MISSING)
    text = f"{r['mean']:.2f}"
    if r["n_seeds"] > 1:
        text += f" ± {r['std']:.2f} (n={r['n_seeds']})"
    return text + (" [partial]" if r["status"] == "partial" else "")


# --- sections, in the order of the report ---------------------------------------------------------


def header_section(r: ReportResult) -> list[str]:
    states = ("finished", "running", "failed", "missing")
    summary = ", ".join(f"{r.counts[s]} {s}" for s in states if r.counts.get(s))
    return [
        f"# raybench report — study `{r.study}`",
        "",
        f"Experiment: `{r.experiment}`  ",
        f"Generated: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  ",
        f"Trials: {sum(r.counts.values())} ({summary or 'none'})",
    ]


def table2_section(r: ReportResult) -> list[str]:
    out = ["", "## Table 2 — validation split, final iteration", ""]
    out.append(
        "Each cell: ours at the final iteration (paper's value, ours − paper). Several seeds: "
        "mean ± sample std (n = seeds). **Bold**: best of the column. "
        f"`{RUNNING} @ iter N`: not finished (last evaluation in brackets); `{FAILED}`: "
        f"the trial failed; `{MISSING}`: never started; `[+k state]`: seeds not finished yet."
    )
    out += ["", table2_markdown(r.rows, r.datasets, r.cells, r.legend), ""]
    if r.bootstrap is not None:
        out += [bootstrap_note(r.bootstrap, r.cells, r.legend), ""]
    return out


def bootstrap_note(boot: Bootstrap, cells: Sequence[Cell], legend: Legend | None = None) -> str:
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
        legend = legend or legend_for([c.row for c in cells])
        names = ", ".join(f"{dataset_label(c.dataset)} {' / '.join(legend.row(c.row))}" for c in missing[:6])
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        text += f"; none (no records of the final evaluation) for {names}{more}"
    text += "."
    if boot.notes:
        text += " Records not used: " + "; ".join(boot.notes) + "."
    return text


def seeds_section(r: ReportResult) -> list[str]:
    multi = [c for c in r.cells if c.n_seeds > 1]
    if not multi:
        return []
    body = [
        [
            *r.legend.row(c.row),
            dataset_label(c.dataset),
            c.n_seeds,
            f"{c.mean:.2f} ± {c.std:.2f}",
            ", ".join(f"s{s}: {v:.2f}" for s, v in sorted(c.seeds.items())),
        ]
        for c in multi
    ]
    header = ["Backbone", "Pretraining", "Regime", "Dataset", "n", "mean ± std", "per seed"]
    return ["## Seeds", "", md_table(header, body), ""]


def paired_section(r: ReportResult) -> list[str]:
    if not len(r.paired):
        return []
    header = ["Backbone", "Regime", "Dataset", "Δ", "n", "mean ± std", "per seed", "paper Δ"]
    header += [f"{_pct(r.bootstrap)} CI", "CI excludes 0", "paper Δ in CI"]
    body = [
        [
            arch_label(p["backbone"]),
            p["regime"],
            dataset_label(p["dataset"]),
            p["comparison"],
            p["n_pairs"],
            f"{p['mean']:+.2f}" + (f" ± {p['std']:.2f}" if finite(p["std"]) else ""),
            ", ".join(
                f"s{s} {float(v):+.2f}" for s, v in (x.split(":") for x in p["per_seed"].split(";") if x)
            ),
            signed(p["paper_delta"]) if finite(p["paper_delta"]) else "—",
            f"[{p['ci_low']:+.2f}, {p['ci_high']:+.2f}]" if finite(p["ci_low"]) else "—",
            _yes_no(p["excludes_zero"]),
            _yes_no(p["paper_in_ci"]),
        ]
        for p in r.paired.to_dict("records")
    ]
    return ["## Paired deltas (same backbone, regime, dataset and seed)", "", md_table(header, body), ""]


def curves_section(r: ReportResult) -> list[str]:
    out = ["## Learning curves", "", f"Validation headline metric vs iteration. {r.legend.caption()}", ""]
    for d, p in r.curves.items():
        out += [f"### {dataset_label(d)}", "", f"![{dataset_label(d)} learning curves]({p.name})", ""]
    return out


def fractions_section(r: ReportResult) -> list[str]:
    frame = r.fractions
    if frame is None or not len(frame):
        return []
    out = ["## Label efficiency — headline metric vs training fraction", ""]
    out.append(
        "Each trial trained on a nested, class-stratified share of the training split with the "
        "same recipe (iterations and batch unchanged); final validation value, mean ± sample std "
        "over seeds. Table 2 above uses the whole split (fraction 1) only."
    )
    out.append("")
    rows = ordered([*r.rows, *zip(frame["backbone"], frame["pretraining"], frame["regime"])], r.rows)
    for d in ordered([*r.datasets, *frame["dataset"]], r.datasets):
        out += [f"### {dataset_label(d)}", "", fractions_markdown(frame, rows, d, r.legend), ""]
        if d in r.fraction_plots:
            out += [f"![{dataset_label(d)} label efficiency]({r.fraction_plots[d].name})", ""]
    return out


def cost_section(r: ReportResult) -> list[str]:
    cost = r.cost
    if not len(cost):
        return ["## Cost per trial", "", "No trial has run yet.", ""]
    body = [
        [
            c["trial"],
            c["state"],
            "" if c["iters"] is None or pd.isna(c["iters"]) else int(c["iters"]),
            _fmt(c["wall_time_h"], ".3f"),
            f"{int(c['workers'])} x {c['gpus_per_worker']:g}",
            _fmt(c["gpu_hours"], ".3f"),
            _fmt(c["imgs_per_s"], ".1f", "—"),
        ]
        for c in cost.to_dict("records")
    ]
    total = _fmt(cost["wall_time_h"].sum(), ".3f"), _fmt(cost["gpu_hours"].sum(), ".3f")
    body.append(["**total**", "", "", total[0], "", total[1], ""])
    header = ["Trial", "State", "Iters", "Wall h", "Workers x GPUs", "GPU-h", "img/s"]
    return ["## Cost per trial", "", md_table(header, body), ""]


def failed_section(r: ReportResult) -> list[str]:
    problems = [t for t in r.trials if t.state == "failed"]
    if not problems:
        return []
    out = ["## Failed trials", ""]
    for t in problems:
        where = f" @ iter {t.last_iter}" if t.last_iter is not None else ""
        out.append(f"- `{t.trial}`{where} (attempts: {t.attempts}): {t.message or 'no message'}")
    return [*out, ""]


def files_section(r: ReportResult) -> list[str]:
    fractions = r.fractions is not None and len(r.fractions)
    return [
        "Files: `table2.csv` (one row per cell), `paired_deltas.csv`, `cost.csv`, "
        "`curves_<dataset>.png`"
        + (", `fractions.csv`, `fractions_<dataset>.png`" if fractions else "")
        + ". Schema and markers: docs/report.md.",
        "",
    ]


SECTIONS = (
    header_section,
    table2_section,
    seeds_section,
    paired_section,
    curves_section,
    fractions_section,
    cost_section,
    failed_section,
    files_section,
)


def render_markdown(r: ReportResult) -> str:
    """The whole ``report.md``."""
    return "\n".join(line for section in SECTIONS for line in section(r))


__all__ = [
    "SECTIONS",
    "bootstrap_note",
    "fractions_markdown",
    "md_table",
    "render_markdown",
    "table2_markdown",
]
