"""Bootstrap intervals: resampling, seeds, paired deltas, and the report that shows them."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raybench.evaluation.records import DetectionRecords, EvalRecords, SemSegRecords
from raybench.results.bootstrap import (
    bootstrap_report,
    dataset_rng,
    hierarchical,
    image_weights,
    percentile_interval,
    seed_draws,
)
from raybench.results.report import TrialInfo, build_cells, build_report, load_paper
from raybench.results.store import ResultsWriter, StoredRecords, write_eval_records, write_status
from raybench.study import load_study

REPO = Path(__file__).resolve().parents[2]
NAMES = ("background", "a", "b")


def semseg(n: int, rng: np.random.Generator, skill: float = 0.7) -> SemSegRecords:
    """Per-image pixel counts: background everywhere, each defect class in ~40 % of images."""
    gt = np.zeros((n, 3), np.int64)
    gt[:, 0] = rng.integers(2_000, 6_000, n)
    gt[:, 1:] = np.where(rng.random((n, 2)) < 0.4, rng.integers(50, 900, (n, 2)), 0)
    inter = np.floor(gt * rng.beta(10 * skill, 10 * (1 - skill), gt.shape)).astype(np.int64)
    union = gt + np.floor(rng.exponential(0.3, gt.shape) * (gt + 50)).astype(np.int64)
    return SemSegRecords(np.arange(n), inter, union, gt, NAMES, 0)


def detection(n: int, rng: np.random.Generator, skill: float = 0.6) -> DetectionRecords:
    """One category, ~2 ground truths per image; hits matched up to a random IoU threshold."""
    n_gt = rng.poisson(2, n)
    img, scores, tps, fps = [], [], [], []
    for i in range(n):
        found = int(rng.binomial(n_gt[i], skill))
        tp = (1 << rng.integers(1, 11, found)) - 1
        false = int(rng.poisson(2))
        img += [i] * (found + false)
        scores.append(np.concatenate([rng.beta(5, 2, found), rng.beta(2, 5, false)]))
        tps.append(np.concatenate([tp, np.zeros(false, np.int64)]))
        fps.append(np.concatenate([1023 & ~tp, np.full(false, 1023)]))
    return DetectionRecords(
        kind="bbox",
        images=np.arange(1, n + 1),
        categories=np.array([1]),
        n_gt=n_gt[:, None],
        det_image=np.array(img, np.int64),
        det_category=np.zeros(len(img), np.int64),
        det_score=np.concatenate(scores),
        det_tp=np.concatenate(tps).astype(np.int32),
        det_fp=np.concatenate(fps).astype(np.int32),
    )


def test_image_weights_are_draws_with_replacement():
    w = image_weights(7, 500, dataset_rng(0, "gdxray"))
    assert w.shape == (500, 7) and (w.sum(1) == 7).all() and (w >= 0).all()
    assert abs(w.mean() - 1.0) < 0.05 and (w == 0).any()  # some images left out, others repeated
    np.testing.assert_array_equal(w, image_weights(7, 500, dataset_rng(0, "gdxray")))
    assert not np.array_equal(w, image_weights(7, 500, dataset_rng(1, "gdxray")))


def test_hierarchical_means_the_drawn_seeds_on_each_image_resample():
    samples = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])  # [seeds, resamples]
    draws = np.array([[0, 0], [1, 0], [1, 1]])
    np.testing.assert_allclose(hierarchical(samples, draws), [1.0, 11.0, 30.0])
    assert seed_draws(1, 4, np.random.default_rng(0)).tolist() == [[0]] * 4
    assert percentile_interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))
    assert all(math.isnan(v) for v in percentile_interval(np.array([np.nan])))


def _trial(name: str, dataset: str, pre: str, seed: int, final: float) -> TrialInfo:
    return TrialInfo(
        name,
        dataset,
        "convnext_t",
        pre,
        "full",
        seed,
        state="finished",
        metric=METRIC[dataset],
        final=final,
        final_iter=10,
    )


METRIC = {"severstal": "val/mIoU", "gdxray": "val/box_AP50"}


def _boot(parts: dict[tuple[str, str, int], object], resamples: int = 1000, seed: int = 0):
    trials, stored = [], {}
    for (dataset, pre, s), part in parts.items():
        name = f"{dataset}-{pre}-s{s}"
        value = float(part.compute(METRIC[dataset], np.ones((1, part.num_images)))[0])
        trials.append(_trial(name, dataset, pre, s, value))
        stored[name] = {10: StoredRecords(name, 10, EvalRecords([part]), "")}
    _, _, cells = build_cells(trials, load_paper())
    return bootstrap_report(cells, stored, resamples=resamples, seed=seed), cells


def test_identical_trials_give_a_paired_interval_of_exactly_zero():
    rng = np.random.default_rng(0)
    sem, det = semseg(60, rng), detection(60, rng)
    boot, _ = _boot(
        {
            ("severstal", "supervised", 42): sem,
            ("severstal", "dinov3", 42): sem,
            ("gdxray", "supervised", 42): det,
            ("gdxray", "dinov3", 42): det,
        }
    )
    for d in ("severstal", "gdxray"):
        ci = boot.pairs[("convnext_t", "full", d, "dinov3", "supervised")]
        assert (ci.low, ci.high) == (0.0, 0.0) and not ci.excludes_zero()
        cell = boot.cells[(("convnext_t", "dinov3", "full"), d)]
        assert cell.high - cell.low > 0.5 and cell.images == 60 and cell.method == "images"


def test_a_better_model_gets_a_positive_paired_interval_narrower_than_the_cells():
    rng = np.random.default_rng(1)
    base = semseg(200, rng, skill=0.6)
    better = SemSegRecords(
        base.images, np.minimum(base.inter * 11 // 10, base.gt), base.union, base.gt, NAMES
    )
    boot, cells = _boot({("severstal", "supervised", 42): base, ("severstal", "dinov3", 42): better})
    pair = boot.pairs[("convnext_t", "full", "severstal", "dinov3", "supervised")]
    a = boot.cells[(("convnext_t", "supervised", "full"), "severstal")]
    b = boot.cells[(("convnext_t", "dinov3", "full"), "severstal")]
    assert pair.low > 0 and pair.excludes_zero()
    # Pairing removes the image-to-image variance both trials share.
    assert pair.high - pair.low < 0.5 * min(a.high - a.low, b.high - b.low)
    finals = {c.row[1]: c.mean for c in cells if c.mean is not None}
    assert pair.contains(finals["dinov3"] - finals["supervised"])
    assert a.contains(finals["supervised"]) and b.contains(finals["dinov3"])


@pytest.mark.parametrize("kind", ["semseg", "detection"])
def test_intervals_shrink_as_the_validation_set_grows(kind):
    make = semseg if kind == "semseg" else detection
    dataset = "severstal" if kind == "semseg" else "gdxray"
    widths = []
    for n in (40, 640):
        boot, _ = _boot({(dataset, "supervised", 42): make(n, np.random.default_rng(n))}, resamples=500)
        ci = boot.cells[(("convnext_t", "supervised", "full"), dataset)]
        widths.append(ci.high - ci.low)
    # 16x the images: about 1/4 of the width (sqrt n); asserted loosely.
    assert widths[1] < 0.5 * widths[0] and widths[1] > 0


def test_seeds_widen_the_interval_and_pair_by_seed():
    rng = np.random.default_rng(2)
    base = semseg(100, rng)
    shifted = SemSegRecords(base.images, base.inter * 8 // 10, base.union, base.gt, NAMES)  # a worse seed
    one, _ = _boot({("severstal", "supervised", 42): base})
    two, _ = _boot({("severstal", "supervised", 42): base, ("severstal", "supervised", 43): shifted})
    c1 = one.cells[(("convnext_t", "supervised", "full"), "severstal")]
    c2 = two.cells[(("convnext_t", "supervised", "full"), "severstal")]
    assert c2.seeds == 2 and c2.method == "seeds+images" and c1.seeds == 1
    assert c2.high - c2.low > 2 * (c1.high - c1.low)  # the seed-to-seed spread dominates
    # Paired over seeds: the same two seeds in both rows, identical records -> exactly zero.
    same, _ = _boot(
        {
            ("severstal", "supervised", 42): base,
            ("severstal", "supervised", 43): shifted,
            ("severstal", "dinov3", 42): base,
            ("severstal", "dinov3", 43): shifted,
        }
    )
    ci = same.pairs[("convnext_t", "full", "severstal", "dinov3", "supervised")]
    assert (ci.low, ci.high, ci.seeds) == (0.0, 0.0, 2)


def test_records_that_do_not_match_the_final_value_are_not_used():
    rng = np.random.default_rng(3)
    part = semseg(30, rng)
    trials = [_trial("t-sup", "severstal", "supervised", 42, 12.0)]  # not what the records give
    _, _, cells = build_cells(trials, load_paper())
    stored = {"t-sup": {10: StoredRecords("t-sup", 10, EvalRecords([part]), "")}}
    boot = bootstrap_report(cells, stored)
    assert not boot.cells and "records give val/mIoU" in boot.notes[0]
    stored = {"t-sup": {7: StoredRecords("t-sup", 7, EvalRecords([part]), "")}}
    boot = bootstrap_report(cells, stored)
    assert not boot.cells and "records at iteration(s) [7], final evaluation at 10" in boot.notes[0]


# --- the report -----------------------------------------------------------------------------------


def _write(root: Path, trial, part, metric: str) -> None:
    d = root / "trials" / trial.name
    value = float(part.compute(metric, np.ones((1, part.num_images)))[0])
    w = ResultsWriter(d, trial.axes(), {"workers": 1, "gpus_per_worker": 1.0, "cpus_per_worker": 4.0})
    w.append(6, 1.0, {metric: value}, 30.0)
    w.close()
    write_eval_records(d, trial.name, 6, EvalRecords([part]))
    write_status(d, "finished", extra={"metric": metric})


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    study = load_study(REPO / "experiments" / "smoke.yaml", dry_run=True)
    root = tmp_path_factory.mktemp("exp") / "smoke"
    rng = np.random.default_rng(5)
    sup, dino = semseg(120, rng, 0.6), semseg(120, rng, 0.75)
    det = detection(80, rng)
    T = study.trial
    _write(root, T("severstal-convnext_t-supervised-full-s42"), sup, "val/mIoU")
    _write(root, T("severstal-convnext_t-dinov3-full-s42"), dino, "val/mIoU")
    _write(root, T("gdxray-convnext_t-supervised-frozen-s42"), det, "val/box_AP50")
    _write(root, T("gdxray-convnext_t-dinov3-frozen-s42"), det, "val/box_AP50")
    # A finished trial without records: its cell shows no interval.
    rr = T("rubber_rings-convnext_t-supervised-frozen-s42")
    w = ResultsWriter(root / "trials" / rr.name, rr.axes(), {"workers": 1})
    w.append(6, 1.0, {"val/mIoU_nobg": 73.0}, 30.0)
    w.close()
    write_status(root / "trials" / rr.name, "finished", extra={"metric": "val/mIoU_nobg"})
    return build_report(str(root), root / "report", study=study, wandb=False)


def test_report_shows_intervals_on_cells_and_deltas(report):
    t = report.table2
    shown = t[t["ours"].notna()]
    assert len(shown) == 5
    with_ci = shown[shown["ci_low"].notna()]
    assert len(with_ci) == 4 and (with_ci["ci_low"] <= with_ci["ours"]).all()
    assert (with_ci["ours"] <= with_ci["ci_high"]).all() and (with_ci["ci_resamples"] == 1000).all()
    row = with_ci[with_ci["dataset"] == "severstal"].iloc[0]
    assert row["cell"].startswith(f"{row['ours']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}] (paper ")
    assert row["ci_images"] == 120 and row["ci_method"] == "images" and row["paper_in_ci"] in (True, False)
    rr = shown[shown["dataset"] == "rubber_rings"].iloc[0]
    assert pd.isna(rr["ci_low"]) and rr["cell"] == "73.00 (paper 73.25, -0.25)"
    csv = pd.read_csv(report.table2_csv)
    assert {"ci_low", "ci_high", "ci_level", "ci_method", "paper_in_ci"} <= set(csv.columns)

    p = report.paired.set_index("dataset")
    gd = p.loc["gdxray"]
    assert (gd["ci_low"], gd["ci_high"]) == (0.0, 0.0) and not gd["excludes_zero"]
    sv = p.loc["severstal"]
    assert sv["ci_low"] > 0 and sv["excludes_zero"] and sv["paper_in_ci"] in (True, False)
    assert sv["paper_in_ci"] == (sv["ci_low"] <= 64.01 - 62.97 <= sv["ci_high"])
    assert {"ci_low", "excludes_zero", "paper_in_ci"} <= set(
        pd.read_csv(report.out_dir / "paired_deltas.csv")
    )

    md = report.markdown.read_text()
    assert "95 % CI | CI excludes 0 | paper Δ in CI |" in md
    assert "| ConvNeXt-T | frozen | GDXray | dinov3 − supervised | 1 | +0.00 |" in md
    line = next(x for x in md.splitlines() if "| GDXray | dinov3 − supervised" in x)
    assert line.endswith("| [+0.00, +0.00] | no | no |")  # paper Δ (-13.44) outside [0, 0]
    assert "95 % percentile bootstrap interval" in md and "4 of 5 cells with a value have one" in md
    assert "none (no records of the final evaluation) for Rubber Rings" in md


def _cli_intervals(root: Path, out: Path, *flags: str) -> pd.DataFrame:
    """``raybench report ROOT --out OUT FLAGS`` (the report's own sub-parser); the intervals of
    table2.csv's cells that have one."""
    import argparse

    from raybench.results.cli import add_report_command

    parser = argparse.ArgumentParser()
    add_report_command(parser.add_subparsers())
    args = parser.parse_args(["report", str(root), "--out", str(out), "--no-wandb", *flags])
    assert args.func(args) == 0
    t = pd.read_csv(out / "table2.csv")
    return t[t["ci_low"].notna()][["dataset", "pretraining", "ci_low", "ci_high", "ci_resamples"]]


def test_cli_bootstrap_seed_and_resamples(report, tmp_path, capsys):
    from raybench.results.bootstrap import RESAMPLES
    from raybench.results.cli import RECOMMENDED_RESAMPLES

    assert RECOMMENDED_RESAMPLES == RESAMPLES  # the CLI's default is the bootstrap's
    root = report.out_dir.parent
    a = _cli_intervals(root, tmp_path / "a", "--bootstrap-seed", "7")
    again = _cli_intervals(root, tmp_path / "again", "--bootstrap-seed", "7")
    b = _cli_intervals(root, tmp_path / "b", "--bootstrap-seed", "8")
    assert len(a) == 4 and (a["ci_resamples"] == 1000).all()
    pd.testing.assert_frame_equal(a, again, check_exact=True)  # the same seed: the same bounds
    # Another seed draws other resamples: every interval moves.
    assert (a["ci_low"].to_numpy() != b["ci_low"].to_numpy()).all()
    assert (a["ci_high"].to_numpy() != b["ci_high"].to_numpy()).all()
    # The default seed is 0: the report built in code with seed 0 has the same bounds.
    default = _cli_intervals(root, tmp_path / "default")
    want = report.table2[report.table2["ci_low"].notna()]
    assert default["ci_low"].tolist() == pytest.approx(want["ci_low"].tolist(), abs=1e-9)
    capsys.readouterr()
    few = _cli_intervals(root, tmp_path / "few", "--bootstrap-resamples", "200")
    assert (few["ci_resamples"] == 200).all()
    err = capsys.readouterr().err
    assert "warning: --bootstrap-resamples 200 is below 1000" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--bootstrap-resamples", "0"],
            "argument --bootstrap-resamples: expected a whole number of resamples >= 1 "
            "(1000 or more for reported intervals), got '0'",
        ),
        (
            ["--bootstrap-resamples", "ten"],
            "argument --bootstrap-resamples: expected a whole number of resamples >= 1 "
            "(1000 or more for reported intervals), got 'ten'",
        ),
        (["--bootstrap-seed", "-1"], "argument --bootstrap-seed: expected a whole number >= 0, got '-1'"),
    ],
)
def test_cli_refuses_bad_bootstrap_values(report, tmp_path, capsys, flags, message):
    from raybench.cli import main

    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exc:
        main(["report", str(report.out_dir.parent), "--out", str(out), "--no-wandb", *flags])
    assert exc.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert errors == [f"raybench report: error: {message}"]
    assert not out.exists()  # refused before any work


def test_benchmark_prints_its_figures():
    proc = subprocess.run(
        [sys.executable, "benchmarks/bootstrap_speed.py", "--resamples", "50", "--scale", "0.05"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cells"] == 20 and out["pairs"] == 8 and out["resamples"] == 50
    assert set(out["per_dataset_s"]) == {"severstal", "rubber_rings", "gdxray", "rareplanes"}
    assert out["total_s"] >= 0 and out["total_cpu_s"] >= 0
