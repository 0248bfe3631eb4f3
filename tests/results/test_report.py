"""The report: Table 2 cells vs the paper, markers, seeds, paired deltas, curves, cost, CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from raybench.console import console_output
from raybench.results.report import FAILED, MISSING, RUNNING, build_report, load_paper
from raybench.results.store import ResultsWriter, write_status
from raybench.study import TrialSpec, load_study

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "experiments" / "smoke.yaml"


@pytest.fixture(scope="module")
def study():
    return load_study(SMOKE, dry_run=True)


def trial_dir(root: Path, name: str) -> Path:
    return root / "trials" / name


def record(
    root: Path,
    t: TrialSpec,
    points: list[tuple[int, dict[str, float], float]],
    state: str | None,
    *,
    resources: dict | None = None,
    where: Path | None = None,
    message: str = "",
) -> Path:
    """Write one trial as the sweep would: status + one flushed part per point."""
    d = where or trial_dir(root, t.name)
    res = resources or {"workers": 1, "gpus_per_worker": 1.0, "cpus_per_worker": 4.0}
    w = ResultsWriter(d, t.axes(), res)
    for it, metrics, wall in points:
        w.append(it, it / 10, metrics, wall)
        w.flush()
    if state is not None:
        write_status(d, state, message, extra={"metric": t.dataset.headline_metric})
    return d


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, study):
    """A synthetic smoke experiment: finished (2 seeds, a resume), running, failed, missing."""
    root = tmp_path_factory.mktemp("exp") / "smoke"
    T = study.trial
    # Severstal, ConvNeXt-T DINOv3 full, seed 42: the best value (70) is NOT the final one;
    # the trial crashed after iter 3 and resumed (wall clock restarts at 0).
    dino42 = T("severstal-convnext_t-dinov3-full-s42")
    res2 = {"workers": 2, "gpus_per_worker": 1.0, "cpus_per_worker": 4.0}
    record(
        root,
        dino42,
        [
            (1, {"train/loss": 2.0, "imgs_per_s": 10.0}, 20.0),
            (3, {"val/mIoU": 70.0, "imgs_per_s": 20.0}, 100.0),
        ],
        None,
        resources=res2,
    )
    record(
        root,
        dino42,
        [
            (3, {"val/mIoU": 70.0, "imgs_per_s": 30.0}, 10.0),
            (6, {"val/mIoU": 64.10, "imgs_per_s": 40.0}, 50.0),
        ],
        "finished",
        resources=res2,
    )
    # second seeds (not in the smoke study: seeds [42]) for DINOv3 and supervised, full
    record(root, dino42.replace(seed=43), [(6, {"val/mIoU": 64.50}, 60.0)], "finished")
    sup42 = T("severstal-convnext_t-supervised-full-s42")
    record(root, sup42, [(3, {"val/mIoU": 50.0}, 30.0), (6, {"val/mIoU": 62.00}, 60.0)], "finished")
    record(root, sup42.replace(seed=43), [(6, {"val/mIoU": 63.00}, 60.0)], "finished")
    # running and failed
    record(
        root,
        T("severstal-resnet50_gn-supervised-full-s42"),
        [(3, {"val/mIoU": 40.0}, 30.0), (4, {"train/loss": 1.0}, 40.0)],
        "running",
    )
    record(
        root,
        T("severstal-convnext_t-supervised-frozen-s42"),
        [(2, {"train/loss": 3.0}, 5.0)],
        "failed",
        message="RuntimeError: CUDA out of memory",
    )
    # severstal-convnext_t-dinov3-frozen-s42: missing (no folder at all)
    # Rubber Rings' headline metric is val/mIoU_nobg in the smoke study (a decoy val/mIoU too)
    record(
        root,
        T("rubber_rings-convnext_t-supervised-frozen-s42"),
        [(6, {"val/mIoU": 99.0, "val/mIoU_nobg": 73.00}, 30.0)],
        "finished",
    )
    # GDXray in a deeper folder (a Tune trial folder inside the experiment)
    gd = T("gdxray-convnext_t-dinov3-frozen-s42")
    record(
        root,
        gd,
        [(6, {"val/box_AP50": 7.00}, 30.0)],
        "finished",
        where=root / "tune" / "run_trial_00001" / gd.name,
    )
    return root


@pytest.fixture(scope="module")
def report(experiment, study, tmp_path_factory):
    return build_report(str(experiment), tmp_path_factory.mktemp("out") / "report", study=study, wandb=False)


def cell(table: pd.DataFrame, dataset: str, backbone: str, pretraining: str, regime: str) -> dict:
    sel = table[
        (table["dataset"] == dataset)
        & (table["backbone"] == backbone)
        & (table["pretraining"] == pretraining)
        & (table["regime"] == regime)
    ]
    assert len(sel) == 1
    return sel.iloc[0].to_dict()


def test_paper_csv_is_parsed_by_dataset_id():
    paper = load_paper()
    assert len(paper) == 20
    got = paper.set_index(["backbone", "pretraining", "regime", "dataset"])["paper"]
    assert got[("convnext_t", "dinov3", "full", "severstal")] == 64.01
    assert got[("convnext_t", "supervised", "frozen", "rubber_rings")] == 73.25
    assert got[("resnet50_gn", "supervised", "full", "rareplanes")] == 78.39
    assert got[("convnext_t", "dinov3", "frozen", "gdxray")] == 7.88


def test_table2_cells_and_markers(report):
    t = report.table2
    assert len(t) == 20  # 5 rows x 4 datasets, every cell present
    assert list(dict.fromkeys(t["dataset"])) == ["severstal", "rubber_rings", "rareplanes", "gdxray"]
    assert list(dict.fromkeys(zip(t["backbone"], t["pretraining"], t["regime"]))) == [
        ("resnet50_gn", "supervised", "full"),
        ("convnext_t", "supervised", "frozen"),
        ("convnext_t", "supervised", "full"),
        ("convnext_t", "dinov3", "frozen"),
        ("convnext_t", "dinov3", "full"),
    ]
    # final iteration, not best (70 at iter 3); seeds 42 and 43 -> mean ± sample std
    c = cell(t, "severstal", "convnext_t", "dinov3", "full")
    assert c["ours"] == pytest.approx(64.30) and c["ours_std"] == pytest.approx(0.28284, abs=1e-4)
    assert c["n_seeds"] == 2 and c["paper"] == 64.01 and c["delta"] == pytest.approx(0.29)
    assert c["status"] == "finished" and c["best"] and c["iter"] == 6
    assert c["cell"] == "64.30 ± 0.28 (n=2; paper 64.01, +0.29)"
    c = cell(t, "severstal", "convnext_t", "supervised", "full")
    assert c["ours"] == pytest.approx(62.5) and not c["best"]
    assert c["cell"] == "62.50 ± 0.71 (n=2; paper 62.97, -0.47)"
    # single seed, headline metric from the study (val/mIoU_nobg, not the decoy val/mIoU)
    c = cell(t, "rubber_rings", "convnext_t", "supervised", "frozen")
    assert c["metric"] == "val/mIoU_nobg" and c["ours"] == 73.0 and c["n_seeds"] == 1
    assert c["cell"] == "73.00 (paper 73.25, -0.25)" and c["best"]
    c = cell(t, "gdxray", "convnext_t", "dinov3", "frozen")
    assert c["cell"] == "7.00 (paper 7.88, -0.88)" and c["best"]
    # markers
    c = cell(t, "severstal", "resnet50_gn", "supervised", "full")
    assert c["status"] == "running" and c["cell"].startswith(f"{RUNNING} @ iter 4") and pd.isna(c["ours"])
    c = cell(t, "severstal", "convnext_t", "supervised", "frozen")
    assert c["status"] == "failed" and c["cell"] == f"{FAILED} @ iter 2"
    c = cell(t, "severstal", "convnext_t", "dinov3", "frozen")
    assert c["status"] == "missing" and c["cell"] == MISSING and c["paper"] == 62.40
    assert (t["status"] == "missing").sum() == 14
    assert report.counts == {"finished": 6, "running": 1, "failed": 1, "missing": 14}


def test_report_markdown(report):
    md = report.markdown.read_text()
    assert "| Backbone | Pretraining | Regime | Severstal (val/mIoU) | Rubber Rings (val/mIoU_nobg) |" in md
    line = next(x for x in md.splitlines() if x.startswith("| ConvNeXt-T | DINOv3 | full |"))
    assert "**64.30** ± 0.28 (n=2; paper 64.01, +0.29)" in line and line.count(MISSING) == 3
    assert "| ResNet-50 (GN) | sup. IN-1k | full | … running @ iter 4 (last 40.00) |" in md
    assert "✗ failed @ iter 2" in md and "RuntimeError: CUDA out of memory" in md
    for d in ("severstal", "rubber_rings", "rareplanes", "gdxray"):
        assert f"](curves_{d}.png)" in md
    assert "| ConvNeXt-T | full | Severstal | dinov3 − supervised | 2 | +1.80 ± 0.42 |" in md


def test_paired_deltas(report):
    p = report.paired
    row = p[(p["dataset"] == "severstal") & (p["regime"] == "full")].iloc[0]
    assert row["comparison"] == "dinov3 − supervised" and row["n_pairs"] == 2
    assert row["mean"] == pytest.approx(1.80) and row["std"] == pytest.approx(0.42426, abs=1e-4)
    assert row["per_seed"] == "42:+2.1000;43:+1.5000"
    assert row["paper_delta"] == pytest.approx(64.01 - 62.97)
    assert len(p) == 1  # no other (backbone, regime, dataset) has both pretrainings finished
    assert (report.out_dir / "paired_deltas.csv").is_file()


def test_curves_are_pngs_of_the_expected_size(report):
    assert set(report.curves) == {"severstal", "rubber_rings", "rareplanes", "gdxray"}
    for d, path in report.curves.items():
        assert path == report.out_dir / f"curves_{d}.png"
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == (800, 500)
            # not blank: a drawn curve has many colours
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 20
    with Image.open(report.curves["severstal"]) as im:
        colours = {c for _, c in im.convert("RGB").getcolors(maxcolors=1 << 20)}
    # DINOv3 orange, ImageNet blue, ResNet-50 green (matplotlib's tab: colours)
    assert {(255, 127, 14), (31, 119, 180), (44, 160, 44)} <= colours


def test_cost_table(report):
    cost = pd.read_csv(report.cost_csv).set_index("trial")
    assert len(cost) == 8  # every trial that ran (missing ones have no cost)
    r = cost.loc["severstal-convnext_t-dinov3-full-s42"]
    assert r["wall_time_s"] == pytest.approx(150.0)  # 100 s before the crash + 50 s after
    assert r["gpu_hours"] == pytest.approx(150.0 / 3600 * 2 * 1.0)
    assert r["imgs_per_s"] == pytest.approx(25.0) and r["workers"] == 2 and r["iters"] == 6
    r = cost.loc["severstal-convnext_t-supervised-frozen-s42"]
    assert r["state"] == "failed" and r["wall_time_s"] == 5.0 and pd.isna(r["imgs_per_s"])
    assert r["gpu_hours"] == pytest.approx(5.0 / 3600)


def test_without_study_uses_status_metric_and_shows_no_missing(experiment, tmp_path):
    res = build_report(str(experiment), tmp_path / "r", wandb=False)
    t = res.table2
    assert "missing" not in set(t["status"]) or not t[t["status"] == "missing"]["trials"].str.len().any()
    c = cell(t, "rubber_rings", "convnext_t", "supervised", "frozen")
    assert c["ours"] == 73.0 and c["metric"] == "val/mIoU_nobg"  # from status.json's metric
    assert res.counts == {"finished": 6, "running": 1, "failed": 1}
    assert res.study == "smoke"


def test_no_key_prints_one_skip_line(experiment, study, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with console_output():  # the one line is a log record, on a command's console
        res = build_report(str(experiment), tmp_path / "r", study=study)
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"[raybench] W&B report skipped: WANDB_API_KEY is not set (local report: {res.markdown})"]
    assert res.wandb_url is None and res.markdown.is_file()


def test_cli_report(experiment, tmp_path, capsys):
    from raybench.results.cli import add_report_command

    parser = argparse.ArgumentParser()
    add_report_command(parser.add_subparsers())
    out = tmp_path / "cli"
    args = parser.parse_args(
        ["report", str(experiment), "--out", str(out), "--study", str(SMOKE), "--no-wandb"]
    )
    assert args.func(args) == 0
    assert "report for study 'smoke'" in capsys.readouterr().out
    for name in ("report.md", "table2.csv", "cost.csv", "paired_deltas.csv", "curves_gdxray.png"):
        assert (out / name).is_file(), name
    t = pd.read_csv(out / "table2.csv")
    assert {"row", "dataset", "ours", "paper", "delta", "status", "n_seeds"} <= set(t.columns)
    # a custom paper CSV replaces the packaged one
    paper = tmp_path / "paper.csv"
    paper.write_text("backbone,pretraining,regime,gdxray_box_AP50\nconvnext_t,dinov3,frozen,10.0\n")
    args = parser.parse_args(
        ["report", str(experiment), "--out", str(out), "--paper", str(paper), "--no-wandb"]
    )
    assert args.func(args) == 0
    c = cell(pd.read_csv(out / "table2.csv"), "gdxray", "convnext_t", "dinov3", "frozen")
    assert c["paper"] == 10.0 and c["delta"] == pytest.approx(-3.0)


# --- a study whose backbones are not the paper's ------------------------------------------------

OTHER_BACKBONES = [
    {
        "id": "r18-sup",
        "arch": "resnet18",
        "timm_name": "resnet18.a1_in1k",
        "pretraining": "supervised",
        "pretraining_data": "ImageNet-1k",
        "pretrained": False,
    },
    {
        "id": "r18-ssl",
        "arch": "resnet18",
        "timm_name": "resnet18.fb_ssl_yfcc100m_ft_in1k",
        "pretraining": "ssl",
        "pretraining_data": "YFCC100M",
        "pretrained": False,
    },
    {
        "id": "vits-dino",
        "arch": "vit_s16",
        "timm_name": "vit_small_patch16_dinov3.lvd1689m",
        "pretraining": "dinov3",
        "pretraining_data": "LVD-1689M",
        "pretrained": False,
    },
]


@pytest.fixture(scope="module")
def other_study():
    """The smoke study with three backbones the paper does not have (and no recipe entries
    for the paper's architectures)."""
    import yaml

    from raybench.study import parse_study

    data = yaml.safe_load(SMOKE.read_text())
    for recipe in data["recipes"].values():
        recipe.pop("by_backbone", None)
    data["backbones"] = OTHER_BACKBONES
    data["rows"] = [
        {"backbone": "r18-sup", "regime": "full"},
        {"backbone": "r18-ssl", "regime": "full"},
        {"backbone": "vits-dino", "regime": "frozen"},
    ]
    return parse_study(data, str(SMOKE), base_dir=SMOKE.parent, dry_run=True)


@pytest.fixture(scope="module")
def other_experiment(tmp_path_factory, other_study):
    """Severstal finished for every row (curves at iterations 3 and 6), one GDXray trial."""
    root = tmp_path_factory.mktemp("other") / "exp"
    T = other_study.trial
    finals = {
        "severstal-resnet18-supervised-full-s42": 55.0,
        "severstal-resnet18-ssl-full-s42": 57.5,
        "severstal-vit_s16-dinov3-frozen-s42": 51.0,
    }
    for name, final in finals.items():
        record(
            root, T(name), [(3, {"val/mIoU": final - 10}, 10.0), (6, {"val/mIoU": final}, 20.0)], "finished"
        )
    record(root, T("gdxray-resnet18-ssl-full-s42"), [(6, {"val/box_AP50": 12.25}, 20.0)], "finished")
    return root


def test_report_of_a_study_without_the_papers_backbones(other_experiment, other_study, tmp_path):
    res = build_report(str(other_experiment), tmp_path / "r", study=other_study, wandb=False)
    # Rows: the study's, in its order; no paper row is added, no paper number is matched.
    assert res.rows == [
        ("resnet18", "supervised", "full"),
        ("resnet18", "ssl", "full"),
        ("vit_s16", "dinov3", "frozen"),
    ]
    t = res.table2
    assert list(dict.fromkeys(t["row"])) == [
        "resnet18 | sup. IN-1k | full",
        "resnet18 | ssl YFCC100M | full",
        "ViT-S/16 | DINOv3 | frozen",
    ]
    assert t["paper"].isna().all() and len(t) == 12
    # Legend entries of the learning curves, top to bottom, and the colours: the two
    # pretrainings of the compared ResNet-18 first (reference blue), then the ViT.
    assert res.curve_legends["severstal"] == [
        "resnet18 · sup. IN-1k · full",
        "resnet18 · ssl YFCC100M · full",
        "ViT-S/16 · DINOv3 · frozen",
    ]
    assert res.curve_legends["gdxray"] == ["resnet18 · ssl YFCC100M · full"]
    assert res.curve_legends["rareplanes"] == []
    assert dict(res.legend.colours) == {
        ("resnet18", "supervised"): "tab:blue",
        ("resnet18", "ssl"): "tab:orange",
        ("vit_s16", "dinov3"): "tab:green",
    }
    with Image.open(res.curves["severstal"]) as im:
        colours = {c for _, c in im.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert {(31, 119, 180), (255, 127, 14), (44, 160, 44)} <= colours  # tab: blue, orange, green
    md = res.markdown.read_text()
    assert (
        "Validation headline metric vs iteration. Colour: backbone and pretraining (blue: resnet18 "
        "sup. IN-1k, orange: resnet18 ssl YFCC100M, green: ViT-S/16 DINOv3); line: solid full "
        "fine-tuning, dashed frozen backbone." in md
    )
    table = [x for x in md.splitlines() if x.startswith(("| resnet18 |", "| ViT-S/16 |"))]
    assert table[:3] == [
        f"| resnet18 | sup. IN-1k | full | 55.00 | {MISSING} | {MISSING} | {MISSING} |",
        f"| resnet18 | ssl YFCC100M | full | **57.50** | {MISSING} | {MISSING} | **12.25** |",
        f"| ViT-S/16 | DINOv3 | frozen | 51.00 | {MISSING} | {MISSING} | {MISSING} |",
    ]
    assert "| resnet18 | full | Severstal | ssl − supervised | 1 | +2.50 |" in md
    for paper_name in ("ConvNeXt", "ResNet-50", "ImageNet ", "orange DINOv3"):
        assert paper_name not in md
    # Without the study, the pretraining data is unknown (the ids name it) and rows come in
    # the store's order (trial names); the colours stay.
    bare = build_report(str(other_experiment), tmp_path / "bare", wandb=False)
    assert bare.curve_legends["severstal"] == [
        "resnet18 · ssl · full",
        "resnet18 · supervised · full",
        "ViT-S/16 · DINOv3 · frozen",
    ]
    assert dict(bare.legend.colours) == dict(res.legend.colours)
