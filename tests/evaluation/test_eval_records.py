"""Per-image evaluation records: a metric recomputed from them on a resample of the images equals
the evaluator run on those images (SemSegEvaluator; pycocotools' COCOeval via CocoEvaluator, with
duplicated images given new ids)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raybench.evaluation.coco import CocoEvaluator
from raybench.evaluation.records import DetectionRecords, SemSegRecords, semseg_records
from raybench.evaluation.semseg import SemSegEvaluator
from raybench.tasks.semantic import GatheredSemSegEvaluator, SemanticBatch

NAMES = ("background", "scratch", "dent", "hole")


def _semantic_images(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(pred, gt) pairs; class 3 ("hole") never in any ground truth, class 2 in few images."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        gt = torch.zeros(12, 16, dtype=torch.int64)
        gt[2:6, 3 : 3 + i % 7] = 1
        if i % 5 == 0:
            gt[7:10, 8:12] = 2
        gt[0, :4] = 255  # ignored pixels
        noise = torch.randint(0, 4, gt.shape, generator=g)
        pred = torch.where(torch.rand(gt.shape, generator=g) < 0.2, noise, gt.clamp(max=3))
        out.append((pred, gt))
    return out


def _semseg(images: list[tuple[torch.Tensor, torch.Tensor]]) -> SemSegEvaluator:
    ev = SemSegEvaluator(len(NAMES), 255, NAMES, background_index=0, per_image=True)
    for pred, gt in images:
        ev.process(pred, gt)
    return ev


def test_semseg_records_match_the_evaluator_on_a_resample():
    images = _semantic_images(20)
    ev = _semseg(images)
    rec = semseg_records([ev.image_stats()], NAMES)
    full = ev.evaluate()
    assert rec.num_images == 20 and rec.images.tolist() == list(range(20))
    # The records reproduce the evaluation itself ...
    for m in ("mIoU", "mIoU_nobg", "pACC", "mACC", "fwIoU", "IoU-scratch", "ACC-dent"):
        assert rec.compute(f"val/{m}", np.ones((1, 20)))[0] == pytest.approx(full[m], abs=1e-9)
    assert math.isnan(rec.compute("val/IoU-hole", np.ones((1, 20)))[0])  # no ground truth
    # ... and any resample: duplicates, and one without class 2 at all (images 0, 5, 10, 15 hold it).
    rng = np.random.default_rng(3)
    draws = [
        rng.integers(0, 20, 20),
        np.array([1, 1, 2, 3, 3, 3, 4, 6, 7, 8, 9, 11, 12, 13, 14, 16, 17, 18, 19, 19]),
    ]
    for draw in draws:
        direct = _semseg([images[i] for i in draw]).evaluate()
        w = np.bincount(draw, minlength=20)[None]
        for m in ("mIoU", "mIoU_nobg", "pACC", "mACC", "fwIoU", "IoU-scratch"):
            assert rec.compute(f"val/{m}", w)[0] == pytest.approx(direct[m], abs=1e-9), m
    assert math.isnan(rec.compute("val/IoU-dent", np.bincount(draws[1], minlength=20)[None])[0])
    # Several resamples at once give the same as one by one.
    ws = np.stack([np.bincount(d, minlength=20) for d in draws])
    assert rec.compute("val/mIoU", ws) == pytest.approx(
        [rec.compute("val/mIoU", w[None])[0] for w in ws], abs=1e-12
    )


def test_semantic_task_evaluator_gathers_records_in_split_order():
    images = _semantic_images(7)

    def batch(items):
        return SemanticBatch(
            images=torch.zeros(len(items), 3, 12, 16, dtype=torch.uint8),
            sem_seg=torch.stack([gt for _, gt in items]),
            sizes=tuple((12, 16) for _ in items),
        )

    # Two workers, round-robin shards as the engine's Shard: rank r holds items r, r + 2, ...
    shards = [GatheredSemSegEvaluator(NAMES, gather=lambda x: x) for _ in range(2)]
    for r, ev in enumerate(shards):
        mine = images[r::2]
        ev.process(batch(mine), [{"sem_seg": p} for p, _ in mine])
    states = {}
    for ev in shards:
        states.setdefault("conf", []).append(ev.semseg.confusion.cpu())
        states.setdefault("stats", []).append(ev.semseg.image_stats())
    calls = iter([states["conf"], states["stats"]] * 2)
    for ev in shards:
        ev.gather = lambda _x: next(calls)
    metrics = [ev.evaluate() for ev in shards]
    rec = shards[0].records().by_metric("val/mIoU")
    assert isinstance(rec, SemSegRecords) and rec.images.tolist() == list(range(7))
    one = _semseg(images)
    one_rec = semseg_records([one.image_stats()], NAMES)
    np.testing.assert_array_equal(rec.inter, one_rec.inter)
    np.testing.assert_array_equal(rec.union, one_rec.union)
    assert metrics[0]["val/mIoU"] == pytest.approx(rec.compute("val/mIoU", np.ones((1, 7)))[0], abs=1e-9)


# --- detection --------------------------------------------------------------------------------------


def _detection_problem(n: int, seed: int = 0, size: int = 64):
    """Random ground truth (two categories, some crowd boxes) and detections: noisy copies of
    the ground truth (IoUs spread over COCO's thresholds), duplicates and false positives."""
    rng = np.random.default_rng(seed)
    targets, outputs = [], []
    for i in range(n):
        k = int(rng.integers(0, 4)) if i % 7 else 0
        xy = rng.uniform(0, size - 24, (k, 2))
        wh = rng.uniform(8, 24, (k, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(1, 3, k)
        crowd = (rng.random(k) < 0.1).astype(np.int64)
        masks = torch.zeros(k, size, size, dtype=torch.uint8)
        for j, (x1, y1, x2, y2) in enumerate(np.round(boxes).astype(int)):
            masks[j, y1:y2, x1:x2] = 1
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "iscrowd": torch.tensor(crowd),
                "masks": masks,
                "image_id": i + 1,
            }
        )
        keep = rng.random(k) < 0.8
        noisy = boxes[keep] + rng.normal(0, 2.5, (int(keep.sum()), 4))
        extra = rng.uniform(0, size - 16, (int(rng.integers(0, 3)), 2))
        fps = np.concatenate([extra, extra + 14], 1)
        dboxes = np.concatenate([noisy, noisy[:1] + 1.0, fps]).reshape(-1, 4)
        dboxes = np.clip(dboxes, 0, size)
        dlabels = np.concatenate([labels[keep], labels[keep][:1], rng.integers(1, 3, len(fps))])
        probs = torch.zeros(len(dboxes), 1, size, size)
        for j, (x1, y1, x2, y2) in enumerate(np.round(dboxes).astype(int)):
            probs[j, 0, y1:y2, x1:x2] = 0.9
        outputs.append(
            {
                "boxes": torch.tensor(dboxes, dtype=torch.float32),
                "labels": torch.tensor(dlabels, dtype=torch.int64),
                "scores": torch.tensor(rng.random(len(dboxes)), dtype=torch.float32),
                "masks": probs,
            }
        )
    return targets, outputs


def _coco(targets, outputs) -> tuple[dict[str, float], CocoEvaluator]:
    ev = CocoEvaluator(("bbox", "segm"), ["a", "b"])
    ev.process(targets, outputs)
    return ev.evaluate(), ev


def test_detection_records_match_cocoeval_on_a_resample():
    n = 30
    targets, outputs = _detection_problem(n)
    full, ev = _coco(targets, outputs)
    records = ev.records()
    box, mask = records.by_metric("val/box_AP"), records.by_metric("val/mask_AP")
    assert isinstance(box, DetectionRecords) and box.kind == "bbox" and mask.kind == "segm"
    assert box.images.tolist() == list(range(1, n + 1)) and box.categories.tolist() == [1, 2]
    assert box.det_score.size > n  # every detection of every image is kept
    ones = np.ones((1, n))
    for m in ("box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "box_AP-a", "mask_AP-b"):
        assert records.by_metric(f"val/{m}").compute(f"val/{m}", ones)[0] == pytest.approx(
            full[f"val/{m}"], abs=1e-6
        )
    assert 5 < full["val/box_AP"] < 95 and 5 < full["val/mask_AP50"] < 100

    rng = np.random.default_rng(7)
    moved = []
    for _ in range(3):
        draw = rng.integers(0, n, n)
        # The resampled set as its own COCO ground truth: duplicated images get new ids.
        t2 = [dict(targets[i], image_id=j + 1) for j, i in enumerate(draw)]
        o2 = [outputs[i] for i in draw]
        direct, _ = _coco(t2, o2)
        w = np.bincount(draw, minlength=n)[None]
        for m in ("box_AP", "box_AP50", "mask_AP", "mask_AP50"):
            got = records.by_metric(f"val/{m}").compute(f"val/{m}", w)[0]
            assert got == pytest.approx(direct[f"val/{m}"], abs=1e-6), m
            moved.append(abs(got - full[f"val/{m}"]))
    assert max(moved) > 1.0  # the resamples do change the metric: the comparison has teeth


def test_detection_records_without_detections_or_ground_truth():
    targets, outputs = _detection_problem(6, seed=1)
    empty = [{k: (v[:0] if k != "image_id" else v) for k, v in o.items()} for o in outputs]
    full, ev = _coco(targets, empty)
    rec = ev.records().by_metric("val/box_AP")
    assert full["val/box_AP"] == 0.0 and rec.det_score.size == 0
    assert rec.compute("val/box_AP", np.ones((1, 6)))[0] == 0.0
    assert rec.n_gt.sum() == sum(int((t["iscrowd"] == 0).sum()) for t in targets)
    # A resample without any ground truth of a category leaves it out; without any, NaN.
    no_gt = [
        dict(t, boxes=t["boxes"][:0], labels=t["labels"][:0], iscrowd=t["iscrowd"][:0], masks=t["masks"][:0])
        for t in targets
    ]
    full, ev = _coco(no_gt, outputs)
    assert math.isnan(full["val/box_AP"])
    assert math.isnan(ev.records().by_metric("val/box_AP").compute("val/box_AP", np.ones((2, 6)))[1])


def test_unknown_metric_and_bad_weights_are_named():
    rec = semseg_records([torch.zeros(2, 3, 4, dtype=torch.int64)], NAMES)
    with pytest.raises(KeyError, match="cannot compute 'val/box_AP'"):
        rec.compute("val/box_AP", np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"shape \[resamples, 2\]"):
        rec.compute("val/mIoU", np.ones((1, 3)))
