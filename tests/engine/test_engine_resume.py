"""Exact resume on the real path: synthetic RarePlanes on disk -> loader -> Mask R-CNN -> COCO eval.

N iterations straight must equal N/2, a crash, and a resume from the N/2 checkpoint: the
same final weights (torch.equal) and the same metrics, on CPU. The trial keeps the paper's
ConvNeXt detection recipe (AdamW + layer decay + drop path 0.4, so the RNG matters) with a
small ConvNeXt (atto) to stay fast.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from raybench.engine import latest_checkpoint, load_checkpoint, read_metrics, train
from raybench.study import load_study
from raybench.study.spec import BackboneSpec, SynthSpec

N = 4


@pytest.fixture()
def trial(repo_root, tmp_path):
    study = load_study(repo_root / "experiments" / "smoke.yaml", dry_run=True)
    base = study.trial("rareplanes-convnext_t-supervised-full-s42")
    assert base.recipe.optimizer.layer_decay
    recipe = dataclasses.replace(
        base.recipe,
        drop_path=0.4,  # the paper's [cnx] value (the smoke study uses 0 to learn in few steps): resume must
        # restore drop path's random stream too
        schedule=dataclasses.replace(base.recipe.schedule, iterations=N),
        checkpoint_period=N // 2,
        eval_period=N // 2,
        log_period=1,
    )
    dataset = dataclasses.replace(
        base.dataset, root=str(tmp_path / "data" / "rareplanes"), synthetic=SynthSpec(images=6, size=64)
    )
    backbone = BackboneSpec(
        id="convnext_atto",
        arch="convnext_atto",
        timm_name="convnext_atto",
        pretraining="none",
        pretrained=False,
    )
    return base.replace(recipe=recipe, dataset=dataset, backbone=backbone)


class CrashAfter:
    def __init__(self, n: int) -> None:
        self.n = n

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        if metrics["iter"] > self.n:
            raise KeyboardInterrupt("simulated crash")


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_mask_rcnn_resume_is_exact(trial, tmp_path):
    straight = train(trial, tmp_path / "straight", verbose=False)
    assert (tmp_path / "data" / "rareplanes").is_dir()  # synthesized on first use
    with pytest.raises(KeyboardInterrupt):
        train(trial, tmp_path / "resumed", reporter=CrashAfter(N // 2), verbose=False)
    assert latest_checkpoint(tmp_path / "resumed").name == f"iter_{N // 2:07d}"
    resumed = train(trial, tmp_path / "resumed", resume=True, verbose=False)

    a = load_checkpoint(latest_checkpoint(tmp_path / "straight"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "resumed"))
    assert a["iteration"] == b["iteration"] == N
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert straight.keys() == resumed.keys() and all(_same(straight[k], resumed[k]) for k in straight)
    assert "val/mask_AP" in straight and "val/box_AP50" in straight and "train/loss_mask" in straight

    def records(out: Path) -> list[dict]:
        keep = lambda k: k not in ("imgs_per_s", "checkpoint")  # noqa: E731
        return [{k: v for k, v in r.items() if keep(k)} for r in read_metrics(out / "metrics.jsonl")]

    ra, rb = records(tmp_path / "straight"), records(tmp_path / "resumed")
    assert [r["iter"] for r in ra] == [r["iter"] for r in rb] == list(range(1, N + 1))
    assert all(r.keys() == s.keys() and all(_same(r[k], s[k]) for k in r) for r, s in zip(ra, rb))
