"""SemSegEvaluator against a hand-computed confusion matrix (ignore pixels, an absent class)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raybench.evaluation.semseg import SemSegEvaluator

# 3 classes: 0 background, 1 and 2 defects; class 2 never occurs in the ground truth.
GT = torch.tensor([[0, 0, 1, 1], [0, 255, 1, 1]])
PRED = torch.tensor([[0, 1, 1, 1], [2, 0, 1, 0]])
# Counted pixels (the ignore pixel at (1, 1) is skipped although predicted 0):
#   gt 0: pred 0, 1, 2     -> class 0: TP 1, FN 2
#   gt 1: pred 1, 1, 1, 0  -> class 1: TP 3, FN 1
#   predicted 0 on gt 1 once, 1 on gt 0 once, 2 on gt 0 once
# IoU0 = 1 / (3 + 2 - 1) = 25 %, IoU1 = 3 / (4 + 4 - 3) = 60 %, IoU2 = NaN (no ground truth).
EXPECTED_CONFUSION = torch.tensor(
    [  # rows: prediction 0, 1, 2, ignore; columns: ground truth 0, 1, 2, ignore
        [1, 1, 0, 1],
        [1, 3, 0, 0],
        [1, 0, 0, 0],
        [0, 0, 0, 0],
    ]
)


def _evaluator() -> SemSegEvaluator:
    return SemSegEvaluator(3, ignore_index=255, class_names=["bg", "scratch", "pit"], background_index=0)


def test_confusion_matrix_and_metrics_by_hand():
    ev = _evaluator()
    ev.process(PRED, GT)
    assert torch.equal(ev.confusion, EXPECTED_CONFUSION)
    res = ev.evaluate()
    assert res["IoU-bg"] == pytest.approx(25.0)
    assert res["IoU-scratch"] == pytest.approx(60.0)
    assert math.isnan(res["IoU-pit"]) and math.isnan(res["ACC-pit"])
    assert res["mIoU"] == pytest.approx((25.0 + 60.0) / 2)  # NaN class left out
    assert res["mIoU_nobg"] == pytest.approx(60.0)
    assert res["fwIoU"] == pytest.approx((3 * 25.0 + 4 * 60.0) / 7)
    assert res["pACC"] == pytest.approx(100 * 4 / 7)
    assert res["mACC"] == pytest.approx(100 * (1 / 3 + 3 / 4) / 2)
    # Foreground = {1, 2}: bg TP 1, fg TP 3, fg->bg 1, bg->fg 2.
    assert res["FB_IoU-bg"] == pytest.approx(25.0)
    assert res["FB_IoU-fg"] == pytest.approx(50.0)
    assert res["FB_IoU"] == pytest.approx(37.5)


def test_no_background_class():
    ev = SemSegEvaluator(3, background_index=None)
    ev.process(PRED, GT)
    res = ev.evaluate()
    assert res["mIoU_nobg"] == pytest.approx(res["mIoU"])
    assert "FB_IoU" not in res
    assert res["IoU-1"] == pytest.approx(60.0)


def test_merge_of_shards_equals_one_pass_and_numpy_inputs():
    whole = _evaluator()
    whole.process(PRED, GT)
    whole.process(PRED.flip(1), GT.flip(1))
    a, b = _evaluator(), _evaluator()
    a.process(PRED.numpy(), GT.numpy())  # numpy arrays are accepted too
    b.process(PRED.flip(1), GT.flip(1))
    a.merge(b)
    assert torch.equal(a.confusion, whole.confusion)
    assert a.evaluate() == pytest.approx(whole.evaluate(), nan_ok=True)


def test_merge_counts_every_pixel_and_reset_forgets_them():
    a, b = _evaluator(), _evaluator()
    a.process(PRED, GT)
    b.process(np.zeros((2, 4), dtype=np.int64), np.zeros((2, 4), dtype=np.int64))
    a.merge(b)
    assert int(a.confusion.sum()) == 8 + 8  # every pixel is counted, ignored ones in the last column
    a.reset()
    assert int(a.confusion.sum()) == 0
    assert math.isnan(a.evaluate()["mIoU"])


def test_invalid_ids_raise():
    ev = _evaluator()
    with pytest.raises(ValueError):
        ev.process(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError):
        ev.process(torch.tensor([0]), torch.tensor([7]))
    with pytest.raises(ValueError):
        SemSegEvaluator(2, class_names=["a"])
