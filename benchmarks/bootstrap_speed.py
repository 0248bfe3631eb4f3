#!/usr/bin/env python
"""Bootstrap intervals at the paper's sizes: the time for Table 2's 20 cells (and their paired
deltas) x 1000 resamples, from synthetic per-image records of realistic shape.

Sizes (validation split, Table 1 of the paper): Severstal 1334 images x 5 classes (mIoU),
Rubber Rings 39 images x 4 classes (mIoU without background), GDXray 356 images with ~10
detections each (box AP50), RarePlanes 1113 tiles with ~30 detections each (mask AP, 10 IoU
thresholds). Five rows per dataset (the paper's), one seed. Runs on CPU, no data or model.

Prints a table, then as its last line one JSON object:
``{"cells": 20, "pairs": .., "resamples": 1000, "total_s": .., "total_cpu_s": .., "per_dataset_s": {...}}``
(wall and CPU seconds of ``bootstrap_report``; the synthetic records are built beforehand).

Usage: python benchmarks/bootstrap_speed.py [--resamples 1000] [--scale 1.0] [--seeds 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raybench.evaluation.records import DetectionRecords, EvalRecords, SemSegRecords  # noqa: E402
from raybench.results.bootstrap import bootstrap_report  # noqa: E402
from raybench.results.report import TrialInfo, build_cells, load_paper  # noqa: E402
from raybench.results.store import StoredRecords  # noqa: E402

#: dataset -> (kind, validation images, classes or detections per image, headline metric)
SIZES: dict[str, tuple[str, int, int, str]] = {
    "severstal": ("semseg", 1334, 5, "val/mIoU"),
    "rubber_rings": ("semseg", 39, 4, "val/mIoU_nobg"),
    "gdxray": ("bbox", 356, 10, "val/box_AP50"),
    "rareplanes": ("segm", 1113, 30, "val/mask_AP"),
}
ROWS = (
    ("resnet50_gn", "supervised", "full"),
    ("convnext_t", "supervised", "frozen"),
    ("convnext_t", "supervised", "full"),
    ("convnext_t", "dinov3", "frozen"),
    ("convnext_t", "dinov3", "full"),
)


def synthetic_semseg(n: int, classes: int, rng: np.random.Generator, skill: float = 0.7) -> SemSegRecords:
    """Per-image pixel counts: background everywhere, each defect class in ~30 % of images."""
    gt = np.zeros((n, classes), np.int64)
    gt[:, 0] = rng.integers(20_000, 60_000, n)
    present = rng.random((n, classes - 1)) < 0.3
    gt[:, 1:] = np.where(present, rng.integers(50, 5_000, (n, classes - 1)), 0)
    inter = np.floor(gt * rng.beta(10 * skill, 10 * (1 - skill), gt.shape)).astype(np.int64)
    extra = np.floor(rng.exponential(0.2, gt.shape) * (gt + 200)).astype(np.int64)
    extra[:, 1:] *= rng.random((n, classes - 1)) < 0.6
    names = ("background", *(f"class_{c}" for c in range(1, classes)))
    return SemSegRecords(np.arange(n), inter, gt + extra, gt, names, 0)


def synthetic_detection(
    kind: str, n: int, per_image: int, rng: np.random.Generator, skill: float = 0.6
) -> DetectionRecords:
    """One category; per image ~``per_image`` detections: a hit per found ground truth (matched
    up to a random IoU threshold, a false positive above it), the rest false positives."""
    n_gt = rng.poisson(per_image * 0.5, n).clip(0)
    det_image, scores, tps, fps = [], [], [], []
    full = (1 << 10) - 1
    for i in range(n):
        found = int(rng.binomial(n_gt[i], skill))
        levels = rng.integers(1, 11, found)  # matched at thresholds 0 .. level-1
        tp = (1 << levels) - 1
        false = max(0, int(rng.poisson(per_image)) - found)
        det_image += [i] * (found + false)
        scores.append(np.concatenate([rng.beta(5, 2, found), rng.beta(2, 5, false)]))
        tps.append(np.concatenate([tp, np.zeros(false, np.int64)]))
        fps.append(np.concatenate([full & ~tp, np.full(false, full)]))
    return DetectionRecords(
        kind=kind,
        images=np.arange(1, n + 1),
        categories=np.array([1]),
        n_gt=n_gt[:, None].astype(np.int64),
        det_image=np.asarray(det_image, np.int64),
        det_category=np.zeros(len(det_image), np.int64),
        det_score=np.concatenate(scores),
        det_tp=np.concatenate(tps).astype(np.int32),
        det_fp=np.concatenate(fps).astype(np.int32),
        category_names=("object",),
        prefix="val/box_" if kind == "bbox" else "val/mask_",
    )


def grid(scale: float, seeds: int, rng: np.random.Generator) -> tuple[list, dict]:
    """Table 2's trials with synthetic records whose final values the records reproduce."""
    trials, stored = [], {}
    for dataset, (kind, n, per, metric) in SIZES.items():
        n = max(4, int(round(n * scale)))
        for r, (arch, pre, regime) in enumerate(ROWS):
            for s in range(seeds):
                skill = 0.55 + 0.05 * r + 0.01 * s
                if kind == "semseg":
                    part = synthetic_semseg(n, per, rng, skill)
                else:
                    part = synthetic_detection(kind, n, per, rng, skill)
                value = float(part.compute(metric, np.ones((1, n), np.int64))[0])
                name = f"{dataset}-{arch}-{pre}-{regime}-s{s}"
                trials.append(
                    TrialInfo(
                        name,
                        dataset,
                        arch,
                        pre,
                        regime,
                        s,
                        state="finished",
                        metric=metric,
                        final=value,
                        final_iter=100,
                    )
                )
                stored[name] = {100: StoredRecords(name, 100, EvalRecords([part]), "")}
    return trials, stored


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--scale", type=float, default=1.0, help="validation set sizes x this")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per cell (hierarchical bootstrap)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    trials, stored = grid(args.scale, args.seeds, rng)
    _, _, cells = build_cells(trials, load_paper())
    per_dataset: dict[str, float] = {}
    cpu: dict[str, float] = {}
    total = {"cells": 0, "pairs": 0}
    print(f"{'dataset':<14}{'images':>8}{'dets/cell':>11}{'cells':>7}{'pairs':>7}{'wall s':>9}{'CPU s':>8}")
    for dataset, (kind, *_) in SIZES.items():
        group = [c for c in cells if c.dataset == dataset]
        t, c = time.perf_counter(), time.process_time()
        boot = bootstrap_report(group, stored, resamples=args.resamples, seed=0)
        per_dataset[dataset] = time.perf_counter() - t
        cpu[dataset] = time.process_time() - c
        assert len(boot.cells) == len(group) and not boot.notes, boot.notes
        total["cells"] += len(boot.cells)
        total["pairs"] += len(boot.pairs)
        first = stored[group[0].trials[0].trial][100].records.parts[0]
        dets = len(first.det_score) if kind != "semseg" else 0
        print(
            f"{dataset:<14}{first.num_images:>8}{dets:>11}{len(boot.cells):>7}{len(boot.pairs):>7}"
            f"{per_dataset[dataset]:>9.2f}{cpu[dataset]:>8.2f}"
        )
    summary = {
        **total,
        "resamples": args.resamples,
        "seeds": args.seeds,
        "scale": args.scale,
        "total_s": round(sum(per_dataset.values()), 3),
        "total_cpu_s": round(sum(cpu.values()), 3),
        "per_dataset_s": {k: round(v, 3) for k, v in per_dataset.items()},
    }
    print(
        f"total: {summary['total_s']:.2f} s wall ({summary['total_cpu_s']:.2f} s CPU) for "
        f"{total['cells']} cells and {total['pairs']} paired deltas x {args.resamples} resamples"
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
