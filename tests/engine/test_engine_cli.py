"""``raybench train STUDY --trial NAME --out DIR`` on the smoke study (synthetic data, CPU)."""

from __future__ import annotations

import pytest
import yaml

from raybench.cli import build_parser, main
from raybench.engine import read_metrics
from raybench.study import load_study

TRIAL = "gdxray-convnext_t-supervised-full-s42"


# The smoke data has only some of the paper's GDXray validation series (the loader warns).
@pytest.mark.filterwarnings("ignore:gdxray")
def test_train_command_writes_metrics_and_checkpoints(repo_root, tmp_path, capsys):
    # A copy of the smoke study: its relative data roots then point into tmp_path. Its
    # detection recipe cut to 6 iterations, GDXray's own iteration override too (the smoke
    # trial's 80 are for learning, this test checks the command's outputs).
    study = tmp_path / "experiments" / "smoke.yaml"
    study.parent.mkdir()
    data = yaml.safe_load((repo_root / "experiments" / "smoke.yaml").read_text())
    data["recipes"]["detectron2"]["schedule"]["iterations"] = 6
    data["recipes"]["detectron2"].update(eval_period=3, checkpoint_period=3, log_period=2)
    gdxray = next(d for d in data["datasets"] if d["id"] == "gdxray")
    gdxray["overrides"]["schedule"].pop("iterations")
    study.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "run"
    recipe = load_study(study, dry_run=True).trial(TRIAL).recipe
    n, period = recipe.schedule.iterations, recipe.eval_period
    assert main(["train", str(study), "--trial", TRIAL, "--out", str(out)]) == 0
    records = read_metrics(out / "metrics.jsonl")
    assert n == 6 and records[-1]["iter"] == n
    assert {"train/loss", "train/loss_classifier", "lr", "epoch", "imgs_per_s"} <= records[-1].keys()
    evals = [r["iter"] for r in records if "val/box_AP50" in r]
    assert evals == sorted({*range(period, n + 1, period), n})  # every eval_period and at the end
    assert (out / "checkpoints" / f"iter_{n:07d}" / "state.pt").is_file()
    assert (tmp_path / "data" / "smoke" / "gdxray" / "Castings").is_dir()
    printed = capsys.readouterr().out
    assert f"iter {n}/{n}" in printed and '"val/box_AP50"' in printed
    # --resume on a finished run trains nothing.
    assert main(["train", str(study), "--trial", TRIAL, "--out", str(out), "--resume"]) == 0
    assert "already trained" in capsys.readouterr().out


def test_train_command_is_registered():
    args = build_parser().parse_args(["train", "s.yaml", "--trial", "t"])
    assert args.command == "train" and args.out is None and args.resume is False
