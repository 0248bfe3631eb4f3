"""``raybench train STUDY --trial NAME --out DIR`` on the smoke study (synthetic data, CPU)."""

from __future__ import annotations

import shutil

import pytest

from raybench.cli import build_parser, main
from raybench.engine import read_metrics

TRIAL = "gdxray-convnext_t-supervised-full-s42"


# The smoke data has only some of the paper's GDXray validation series (the loader warns).
@pytest.mark.filterwarnings("ignore:gdxray")
def test_train_command_writes_metrics_and_checkpoints(repo_root, tmp_path, capsys):
    # A copy of the smoke study: its relative data roots then point into tmp_path.
    study = tmp_path / "experiments" / "smoke.yaml"
    study.parent.mkdir()
    shutil.copy(repo_root / "experiments" / "smoke.yaml", study)
    out = tmp_path / "run"
    assert main(["train", str(study), "--trial", TRIAL, "--out", str(out)]) == 0
    records = read_metrics(out / "metrics.jsonl")
    assert records[-1]["iter"] == 6
    assert {"train/loss", "train/loss_classifier", "lr", "epoch", "imgs_per_s"} <= records[-1].keys()
    assert "val/box_AP50" in records[-1] and "val/box_AP50" in records[1]  # eval at 3 and 6
    assert (out / "checkpoints" / "iter_0000006" / "state.pt").is_file()
    assert (tmp_path / "data" / "smoke" / "gdxray" / "Castings").is_dir()
    printed = capsys.readouterr().out
    assert "iter 6/6" in printed and '"val/box_AP50"' in printed
    # --resume on a finished run trains nothing.
    assert main(["train", str(study), "--trial", TRIAL, "--out", str(out), "--resume"]) == 0
    assert "already trained" in capsys.readouterr().out


def test_train_command_is_registered():
    args = build_parser().parse_args(["train", "s.yaml", "--trial", "t"])
    assert args.command == "train" and args.out is None and args.resume is False
