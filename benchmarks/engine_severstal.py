#!/usr/bin/env python
"""The engine end to end at Severstal's real size: a paper Mask2Former trial on synthetic data.

A synthetic Severstal copy at the real image size (1600 x 256, :mod:`raybench.data.synth`) is
written to a temporary folder; the paper's ``severstal-<arch>-supervised-<regime>`` trial (paper
recipe: batch 16, the paper's crops and augmentation, bf16 on CUDA, ``--workers`` DataLoader
workers) trains on it for ``--iterations`` iterations without Ray, random-init backbone (no hub),
with one evaluation and one checkpoint at the end. What it measures is everything a real trial
pays per iteration: decoding and augmenting in the loader workers, host-to-device copies, the
step, the engine's bookkeeping. Reported: the engine's own ``imgs_per_s`` per log window (the
first window, which holds the start-up, is left out of the median), wall time, evaluation time.

``--src DIR`` imports raybench from another checkout (before / after comparisons).
Prints a line per window and, as its last line, one JSON object.
Usage: python benchmarks/engine_severstal.py [--iterations 60] [--workers 8] [--images 96]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(REPO), help="checkout whose raybench package to import")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--log-period", type=int, default=10)
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers")
    parser.add_argument("--images", type=int, default=96, help="synthetic images (80 %% train)")
    parser.add_argument("--arch", default="convnext_t")
    parser.add_argument("--regime", default="full")
    parser.add_argument("--batch", type=int, default=None, help="override the recipe's batch (16)")
    parser.add_argument("--data", default=None, help="reuse / keep the synthetic data here")
    parser.add_argument("--allow-cpu", action="store_true", help="run on CPU (to check the script)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.src).resolve()))

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("engine_severstal: no CUDA device (--allow-cpu runs it on CPU to check it)", file=sys.stderr)
        return 2
    from raybench.data.synth import synthesize
    from raybench.engine import train
    from raybench.engine.sinks import read_metrics
    from raybench.study import load_study

    work = Path(tempfile.mkdtemp(prefix="raybench-engine-severstal-"))
    data = Path(args.data) if args.data else work / "severstal"
    t0 = time.perf_counter()
    if not (data / "train.csv").exists():
        synthesize("severstal", data, images=args.images, size=None if cuda else 64, seed=0)
    synth_s = time.perf_counter() - t0

    study = load_study(REPO / "experiments" / "paper.yaml", dry_run=True)
    name = f"severstal-{args.arch}-supervised-{args.regime}-s42"
    trial = next(t for t in study.trials if t.name == name)
    recipe = trial.recipe
    n = args.iterations
    recipe = dataclasses.replace(
        recipe,
        schedule=dataclasses.replace(recipe.schedule, iterations=n),
        eval_period=n,
        checkpoint_period=n,
        log_period=args.log_period,
        loader_workers=args.workers,
        batch_size=args.batch or recipe.batch_size,
    )
    if not cuda:  # a CPU check of the script: tiny crops
        recipe = dataclasses.replace(
            recipe, input=dataclasses.replace(recipe.input, crop_size=(64, 64), train_short_edge=(64,))
        )
    trial = trial.replace(
        backbone=dataclasses.replace(trial.backbone, pretrained=False),
        dataset=dataclasses.replace(trial.dataset, root=str(data)),
        recipe=recipe,
        scaling=dataclasses.replace(
            trial.scaling, use_gpu=cuda, workers=1, gpus_per_worker=1.0 if cuda else 0
        ),
    )
    out = work / "run"
    t1 = time.perf_counter()
    metrics = train(trial, out, resume=False, verbose=True)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t1
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "imgs_per_s" in r]
    windows = [round(r["imgs_per_s"], 2) for r in rows]
    steady = windows[1:] or windows
    result = {
        "benchmark": "engine_severstal",
        "src": str(Path(args.src).resolve()),
        "trial": name,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "iterations": n,
        "batch": recipe.batch_size,
        "crop": list(recipe.input.crop_size) if recipe.input.crop_size else None,
        "loader_workers": args.workers,
        "synth_images": args.images,
        "synth_s": round(synth_s, 1),
        "wall_s": round(wall, 1),
        "imgs_per_s_windows": windows,
        "imgs_per_s_median": round(statistics.median(steady), 2) if steady else None,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "final_loss": next((r["train/loss"] for r in reversed(rows) if "train/loss" in r), None),
        "val": {k: round(float(v), 4) for k, v in metrics.items() if k.startswith("val/") and "-" not in k},
    }
    print(json.dumps(result))
    shutil.rmtree(out, ignore_errors=True)
    if not args.data:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
