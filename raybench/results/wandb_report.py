"""The study as a W&B Report (``wandb-workspaces`` reports API), next to the local report.

Why building is split from saving: :func:`build_wandb_report` is pure (no network, no
key), so tests and a dry run can inspect every runset and panel; only
:func:`publish_wandb_report` talks to W&B, and only with ``WANDB_API_KEY`` set. Without a
key it logs one line (INFO, on the command's console) and returns — the local report
(report.md) is always made.

The runs are found the way :mod:`raybench.tracking` logs them: W&B group = study name,
job type = dataset id, ``config.axes`` = ``TrialSpec.axes()``, step = iteration.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raybench.results.report import ReportResult

log = logging.getLogger(__name__)

#: Curves and bars are grouped by these run-config keys (one line per Table 2 row).
GROUP_BY: tuple[str, ...] = ("config.axes.backbone", "config.axes.pretraining", "config.axes.regime")
DEFAULT_PROJECT = "raybench"
SKIP_NO_KEY = "W&B report skipped: WANDB_API_KEY is not set (local report: {where})"


def _quote(value: str) -> str:
    return str(value).replace("'", "")


def runset_filter(study: str, dataset: str | None = None) -> str:
    """W&B filter expression for the study's runs (optionally one dataset)."""
    expr = f"Group = '{_quote(study)}'"
    if dataset is not None:
        expr += f" and JobType = '{_quote(dataset)}'"
    return expr


def build_wandb_report(
    *,
    study: str,
    datasets: Sequence[tuple[str, str]],
    project: str = DEFAULT_PROJECT,
    entity: str = "",
    table_markdown: str = "",
    title: str | None = None,
    description: str = "",
) -> Any:
    """A ``wandb_workspaces.reports.v2.Report``: Table 2 and per-dataset curves (not saved).

    ``datasets`` = [(dataset id, headline metric)]. One runset per dataset, filtered to
    the study's W&B group and the dataset's job type, grouped by backbone / pretraining /
    regime; panels: headline metric vs iteration, train loss, final value per group.
    No network: pass ``entity`` explicitly ("" = resolved when saving).
    """
    import wandb_workspaces.reports.v2 as wr

    from raybench.results.report import dataset_label

    def runset(name: str, dataset: str | None) -> Any:
        return wr.Runset(
            entity=entity,
            project=project,
            name=name,
            filters=runset_filter(study, dataset),
            groupby=list(GROUP_BY),
        )

    blocks: list[Any] = []
    if description:
        blocks.append(wr.P(text=description))
    blocks.append(wr.H2(text="Table 2 — validation split, final iteration"))
    if table_markdown:
        blocks.append(wr.MarkdownBlock(text=table_markdown))
    blocks.append(wr.H2(text="Learning curves"))
    for ds, metric in datasets:
        label = dataset_label(ds)
        blocks.append(wr.H3(text=f"{label} — {metric}"))
        panels = [
            wr.LinePlot(
                title=f"{label}: {metric} vs iteration",
                x="Step",
                y=[metric],
                title_x="iteration",
                title_y=metric,
                layout=wr.Layout(x=0, y=0, w=12, h=8),
            ),
            wr.LinePlot(
                title=f"{label}: train/loss",
                x="Step",
                y=["train/loss"],
                title_x="iteration",
                title_y="train/loss",
                layout=wr.Layout(x=12, y=0, w=12, h=8),
            ),
            wr.BarPlot(
                title=f"{label}: final {metric}",
                metrics=[metric],
                orientation="h",
                layout=wr.Layout(x=0, y=8, w=24, h=6),
            ),
        ]
        blocks.append(wr.PanelGrid(runsets=[runset(f"{study} · {ds}", ds)], panels=panels))
    blocks.append(wr.H2(text="Throughput"))
    blocks.append(
        wr.PanelGrid(
            runsets=[runset(f"{study} · all", None)],
            panels=[wr.BarPlot(title="images/s", metrics=["imgs_per_s"], orientation="h")],
        )
    )
    return wr.Report(
        project=project,
        entity=entity,
        title=(title or f"raybench — {study}")[:128],
        description=description,
        blocks=blocks,
        width="fluid",
    )


def _datasets_of(result: ReportResult) -> list[tuple[str, str]]:
    out: dict[str, str] = {}
    for c in result.cells:
        if c.metric and c.dataset not in out:
            out[c.dataset] = c.metric
    return list(out.items())


def report_for(result: ReportResult, *, project: str | None = None, entity: str | None = None) -> Any:
    """:func:`build_wandb_report` for a local :class:`ReportResult` (no network)."""
    from raybench.results.report import table2_markdown

    return build_wandb_report(
        study=result.study,
        datasets=_datasets_of(result),
        project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        entity=entity or os.environ.get("WANDB_ENTITY") or "",
        table_markdown=table2_markdown(result.rows, result.datasets, result.cells, result.legend),
        description=f"Study `{result.study}`: ours vs the paper (arXiv 2605.23472), generated by "
        "`raybench report`.",
    )


def publish_wandb_report(
    result: ReportResult, *, project: str | None = None, entity: str | None = None
) -> str | None:
    """Save the W&B Report when a key is set; otherwise log one line. Never raises."""
    where = result.markdown
    if not os.environ.get("WANDB_API_KEY"):
        log.info(SKIP_NO_KEY.format(where=where))
        return None
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        log.info(f"W&B report skipped: WANDB_MODE={mode} (local report: {where})")
        return None
    try:
        report = report_for(result, project=project, entity=entity)
    except ImportError:
        log.info(
            f"W&B report skipped: `pip install wandb-workspaces` for the reports API (local report: {where})"
        )
        return None
    try:
        if not report.entity:
            import wandb

            report.entity = wandb.Api().default_entity or ""
            for block in report.blocks:
                for rs in getattr(block, "runsets", None) or []:
                    rs.entity = report.entity
        report.save()
        url = getattr(report, "url", None)
        log.info(f"W&B report: {url}")
        return url
    except Exception as exc:  # noqa: BLE001 - W&B must never fail the local report
        log.warning(f"W&B report not saved ({type(exc).__name__}: {exc}); local report: {where}")
        return None


__all__ = ["GROUP_BY", "build_wandb_report", "publish_wandb_report", "report_for", "runset_filter"]
