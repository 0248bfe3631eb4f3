"""COCO evaluator: exact values, hand-computed cases, empty cases, 2-shard gather."""

from __future__ import annotations

import math

import pytest
import torch

from raybench.evaluation.coco import CocoEvaluator

# COCO interpolates precision at 101 recall points (0, 0.01, ..., 1.0) and averages over
# 10 IoU thresholds (0.50, 0.55, ..., 0.95).
RECALL_POINTS = 101


def _target(
    image_id: int, boxes: list[list[float]], labels: list[int] | None = None, h: int = 100, w: int = 100
):
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    lab = torch.tensor(labels if labels is not None else [1] * len(b), dtype=torch.int64)
    masks = torch.zeros(len(b), h, w, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(b.round().long().tolist()):
        masks[k, y1:y2, x1:x2] = 1
    return {"boxes": b, "labels": lab, "image_id": image_id, "masks": masks}


def _output(
    boxes: list[list[float]], scores: list[float], labels: list[int] | None = None, h: int = 100, w: int = 100
):
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    lab = torch.tensor(labels if labels is not None else [1] * len(b), dtype=torch.int64)
    probs = torch.zeros(len(b), 1, h, w)
    for k, (x1, y1, x2, y2) in enumerate(b.round().long().tolist()):
        probs[k, 0, y1:y2, x1:x2] = 0.9
    return {"boxes": b, "labels": lab, "scores": torch.tensor(scores), "masks": probs}


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k]) for k in a
    )


def test_perfect_predictions_give_100():
    ev = CocoEvaluator(("bbox", "segm"), ["a", "b"])
    targets = [_target(1, [[10, 10, 50, 60], [60, 20, 90, 40]], [1, 2]), _target(2, [[5, 5, 95, 95]], [1])]
    outputs = [_output(t["boxes"].tolist(), [1.0] * len(t["boxes"]), t["labels"].tolist()) for t in targets]
    ev.process(targets, outputs)
    res = ev.evaluate()
    for kind in ("box", "mask"):
        assert res[f"val/{kind}_AP"] == pytest.approx(100.0)
        assert res[f"val/{kind}_AP50"] == pytest.approx(100.0)
        assert res[f"val/{kind}_AP75"] == pytest.approx(100.0)
        assert res[f"val/{kind}_AP-a"] == pytest.approx(100.0)
        assert res[f"val/{kind}_AP-b"] == pytest.approx(100.0)


def test_shifted_and_missed_boxes_hand_computed():
    # Image 1: exact hit (score .9). Image 2: a box shifted so IoU = 0.62 (score .8).
    # Image 3: a ground-truth box nobody predicts.
    gt2 = [0.0, 0.0, 50.0, 50.0]
    # Shift right by dx: IoU = (50-dx)*50 / ((50+dx)*50) = 0.62 -> dx = 50*0.38/1.62.
    dx = 50 * 0.38 / 1.62
    ev = CocoEvaluator(("bbox",))
    ev.process(
        [_target(1, [[10, 10, 40, 40]]), _target(2, [gt2]), _target(3, [[20, 20, 70, 70]])],
        [_output([[10, 10, 40, 40]], [0.9]), _output([[dx, 0, 50 + dx, 50]], [0.8]), _output([], [])],
    )
    res = ev.evaluate()
    # IoU thresholds <= 0.60 (3 of 10): both hits are true positives -> precision 1 up to
    # recall 2/3 -> recall points 0.00..0.66 = 67 of 101.
    # Thresholds > 0.60 (7 of 10): the .8 box is a false positive after the .9 hit ->
    # precision 1 up to recall 1/3 -> points 0.00..0.33 = 34 of 101.
    ap = (3 * 67 + 7 * 34) / (10 * RECALL_POINTS) * 100
    assert res["val/box_AP"] == pytest.approx(ap, abs=1e-6)
    assert res["val/box_AP50"] == pytest.approx(67 / RECALL_POINTS * 100, abs=1e-6)
    assert res["val/box_AP75"] == pytest.approx(34 / RECALL_POINTS * 100, abs=1e-6)
    assert math.isnan(res["val/box_APl"])  # no GT box >= 96^2 pixels


def test_false_positive_on_image_without_gt_counts():
    ev = CocoEvaluator(("bbox",))
    # The false positive scores higher than the hit: precision 1/2 at recall 1.
    ev.process(
        [_target(1, [[10, 10, 40, 40]]), _target(2, [])],
        [_output([[10, 10, 40, 40]], [0.5]), _output([[0, 0, 30, 30]], [0.9])],
    )
    assert ev.evaluate()["val/box_AP"] == pytest.approx(50.0)


def test_empty_cases():
    # No ground truth at all: AP undefined -> NaN (predictions or not).
    ev = CocoEvaluator(("bbox", "segm"), ["a"])
    ev.process([_target(1, [])], [_output([[0, 0, 10, 10]], [0.9])])
    res = ev.evaluate()
    assert math.isnan(res["val/box_AP"]) and math.isnan(res["val/mask_AP50"])
    # Ground truth but no prediction anywhere: AP = 0 (pycocotools' value).
    ev = CocoEvaluator(("bbox", "segm"), ["a", "b"])
    ev.process([_target(1, [[10, 10, 40, 40]]), _target(2, [])], [_output([], []), _output([], [])])
    res = ev.evaluate()
    assert res["val/box_AP"] == 0.0 and res["val/mask_AP75"] == 0.0 and res["val/box_AP-a"] == 0.0
    assert math.isnan(res["val/box_AP-b"])  # class without GT
    assert math.isnan(res["val/box_APl"])  # area range without GT
    # Nothing processed at all.
    res = CocoEvaluator(("bbox",)).evaluate()
    assert math.isnan(res["val/box_AP"])


def test_two_shard_gather_equals_one_shard():
    torch.manual_seed(0)
    targets, outputs = [], []
    for i in range(6):
        n = i % 3
        boxes = (torch.rand(n, 2) * 50).repeat(1, 2) + torch.tensor([0, 0, 20, 30])
        targets.append(_target(i + 1, boxes.tolist(), [1 + k % 2 for k in range(n)]))
        noisy = (boxes + torch.randn_like(boxes) * 3).tolist() + [[5, 5, 25, 25]]
        outputs.append(_output(noisy, torch.rand(n + 1).tolist(), [1 + k % 2 for k in range(n + 1)]))

    one = CocoEvaluator(("bbox", "segm"), ["a", "b"])
    one.process(targets, outputs)
    expected = one.evaluate()

    shards = [CocoEvaluator(("bbox", "segm"), ["a", "b"]) for _ in range(2)]
    # Shard like the engine does (rank r takes items r::2); the same image twice is counted once.
    shards[0].process(targets[0::2], outputs[0::2])
    shards[1].process(targets[1::2] + targets[:1], outputs[1::2] + outputs[:1])
    for shard in shards:
        shard.gather = lambda _state: [s.state for s in shards]
    got = [s.evaluate() for s in shards]
    assert 0 < expected["val/box_AP"] < 100
    assert _same(got[0], expected) and _same(got[1], expected)
