"""The W&B Report: built and inspected without network; saved only with a key."""

from __future__ import annotations

import pytest
import wandb_workspaces.reports.v2 as wr  # a dependency: missing must fail, not skip

from raybench.console import console_output  # noqa: E402
from raybench.results.report import build_report  # noqa: E402
from raybench.results.store import ResultsWriter, write_status  # noqa: E402
from raybench.results.wandb_report import (  # noqa: E402
    GROUP_BY,
    build_wandb_report,
    publish_wandb_report,
    report_for,
)

DATASETS = [("severstal", "val/mIoU"), ("gdxray", "val/box_AP50")]


def grids(report) -> list:
    return [b for b in report.blocks if isinstance(b, wr.PanelGrid)]


def test_builder_makes_runsets_and_panels_without_network():
    rep = build_wandb_report(
        study="smoke",
        datasets=DATASETS,
        project="proj",
        entity="",
        table_markdown="| a | b |\n|---|---|\n| 1 | 2 |",
    )
    assert isinstance(rep, wr.Report) and rep.project == "proj" and rep.title == "raybench — smoke"
    md = [b for b in rep.blocks if isinstance(b, wr.MarkdownBlock)]
    assert len(md) == 1 and md[0].text.startswith("| a | b |")
    g = grids(rep)
    assert len(g) == 3  # one per dataset + throughput
    for grid, (ds, metric) in zip(g, DATASETS):
        (rs,) = grid.runsets
        assert rs.project == "proj" and rs.filters == f"Group = 'smoke' and JobType = '{ds}'"
        assert rs.groupby == list(GROUP_BY)
        curve, loss, bars = grid.panels
        assert isinstance(curve, wr.LinePlot) and curve.y == [metric] and curve.x == "Step"
        assert curve.title_x == "iteration" and curve.title_y == metric
        assert isinstance(loss, wr.LinePlot) and loss.y == ["train/loss"]
        assert isinstance(bars, wr.BarPlot) and bars.metrics == [metric]
    assert g[2].runsets[0].filters == "Group = 'smoke'"
    assert [b.text for b in rep.blocks if isinstance(b, wr.H3)] == [
        "Severstal — val/mIoU",
        "GDXray — val/box_AP50",
    ]
    # The filter means what it says (W&B's own parser): group = study, job type = dataset.
    from wandb_workspaces import expr

    v2 = expr.filters_tree_to_v2(expr.expr_to_filters(g[0].runsets[0].filters))
    keys = [(f["key"]["name"], f["value"]) for f in v2["filters"]]
    assert keys == [("group", "smoke"), ("jobType", "severstal")]
    model = g[0].runsets[0]._to_model()  # serialises offline when entity is unset
    assert [k.name for k in model.grouping] == [
        "axes.value.backbone",
        "axes.value.pretraining",
        "axes.value.regime",
    ]


@pytest.fixture
def small_report(tmp_path):
    axes = {
        "trial": "gdxray-convnext_t-dinov3-frozen-s42",
        "study": "smoke",
        "dataset": "gdxray",
        "task": "detection",
        "decoder": "faster_rcnn",
        "backbone": "convnext_t",
        "timm_name": "convnext_tiny.dinov3_lvd1689m",
        "pretraining": "dinov3",
        "regime": "frozen",
        "seed": 42,
    }
    d = tmp_path / "exp" / "trials" / axes["trial"]
    w = ResultsWriter(d, axes, {"workers": 1, "gpus_per_worker": 1, "cpus_per_worker": 2})
    w.append(6, 1.0, {"val/box_AP50": 7.0}, 10.0)
    w.flush()
    write_status(d, "finished", extra={"metric": "val/box_AP50"})
    return build_report(str(tmp_path / "exp"), tmp_path / "out", wandb=False)


@pytest.fixture
def no_save(monkeypatch):
    saved = []
    monkeypatch.setattr(wr.Report, "save", lambda self, *a, **k: saved.append(self) or self)
    return saved


def test_report_for_result_carries_table_and_datasets(small_report, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "envproj")
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    rep = report_for(small_report)
    assert rep.project == "envproj" and rep.entity == ""
    md = next(b for b in rep.blocks if isinstance(b, wr.MarkdownBlock)).text
    assert "**7.00** (paper 7.88, -0.88)" in md
    (grid, _) = grids(rep)
    assert grid.runsets[0].filters == "Group = 'smoke' and JobType = 'gdxray'"


def test_no_key_skips_with_one_line_and_saves_nothing(small_report, monkeypatch, capsys, no_save):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with console_output():  # the one line is a log record, on a command's console
        assert publish_wandb_report(small_report) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("[raybench] W&B report skipped: WANDB_API_KEY is not set")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with console_output():
        assert publish_wandb_report(small_report) is None
    assert "WANDB_MODE=offline" in capsys.readouterr().out
    assert no_save == []


def test_with_key_the_report_is_saved_once(small_report, monkeypatch, capsys, no_save):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "online")
    with console_output():
        publish_wandb_report(small_report, project="p", entity="team")
    assert len(no_save) == 1 and no_save[0].entity == "team" and no_save[0].project == "p"
    assert all(rs.entity == "team" for g in grids(no_save[0]) for rs in g.runsets)
    assert "[raybench] W&B report" in capsys.readouterr().out
