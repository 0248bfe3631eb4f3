#!/usr/bin/env python
"""The real engine on a GPU: one smoke trial per task family, end to end, without Ray.

What the CPU test suite cannot reach runs here: bf16 autocast, channels-last weights,
fused optimizers, pinned loaders, evaluation on the device, ``recipe.compile``, and a
checkpoint written from CUDA and resumed. Each trial of ``--study`` matching ``--trials``
is trained with ``use_gpu: true`` for ``--iterations`` (evaluated and checkpointed half
way and at the end), then trained again from its half-way checkpoint: the resumed run
must finish, and its final losses are printed next to the straight run's (GPU kernels
are not bitwise deterministic, so this is a report, not an equality check).

Prints one line per run and, as its last line, one JSON object with every figure.
Usage: python benchmarks/engine_gpu.py [--iterations 40] [--trials PATTERN,...]
       [--compile-trial PATTERN] [--workers 4] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_TRIALS = (
    "gdxray-convnext_t-dinov3-full-s42",
    "rareplanes-convnext_t-dinov3-full-s42",
    "severstal-convnext_t-dinov3-full-s42",
    "rubber_rings-resnet50_gn-supervised-full-s42",
    "severstal-convnext_t-supervised-frozen-s42",
)


def gpu_trial(trial, iterations: int, workers: int, compile_: bool):
    """The smoke trial on one GPU: bf16, channels-last, a half-way checkpoint."""
    half = max(1, iterations // 2)
    schedule = dataclasses.replace(trial.recipe.schedule, iterations=iterations)
    recipe = dataclasses.replace(
        trial.recipe,
        schedule=schedule,
        amp=True,
        channels_last=True,
        compile=compile_,
        eval_period=half,
        checkpoint_period=half,
        log_period=max(1, iterations // 4),
        loader_workers=workers,
    )
    scaling = dataclasses.replace(trial.scaling, use_gpu=True, workers=1, gpus_per_worker=1.0)
    return trial.replace(recipe=recipe, scaling=scaling)


def final_losses(out: Path) -> dict[str, float]:
    from raybench.engine.sinks import read_metrics

    rows = [r for r in read_metrics(out / "metrics.jsonl") if any(k.startswith("train/loss") for k in r)]
    return {k: round(v, 5) for k, v in rows[-1].items() if k.startswith("train/loss")} if rows else {}


def run(trial, out: Path) -> dict:
    """Train straight, then again from the half-way checkpoint; figures of both."""
    import torch

    from raybench.engine import train
    from raybench.engine.checkpoint import STATE_FILE, list_checkpoints

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    metrics = train(trial, out, resume=False, verbose=True)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    straight = final_losses(out)
    checkpoints = list_checkpoints(out)
    if len(checkpoints) < 2:
        raise RuntimeError(f"{trial.name}: expected a half-way and a final checkpoint, got {checkpoints}")
    half = checkpoints[-2]
    state = torch.load(half / STATE_FILE, map_location="cpu", weights_only=True)
    resumed_out = out.with_name(out.name + "-resumed")
    shutil.rmtree(resumed_out, ignore_errors=True)
    t1 = time.perf_counter()
    resumed_metrics = train(trial, resumed_out, resume=False, resume_from=half, verbose=False)
    resume_wall = time.perf_counter() - t1
    finite = all(v == v and abs(v) != float("inf") for v in straight.values())
    return {
        "trial": trial.name,
        "decoder": trial.dataset.decoder,
        "compiled": trial.recipe.compile,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "iterations": trial.recipe.schedule.iterations,
        "wall_s": round(wall, 1),
        "peak_mem_gib": round(peak, 2),
        "final_losses": straight,
        "losses_finite": finite,
        "metrics": {k: round(float(v), 4) for k, v in metrics.items() if isinstance(v, (int, float))},
        "resumed_from": half.name,
        "checkpoint_iteration": state.get("iteration"),
        "resumed_metrics": {
            k: round(float(v), 4) for k, v in resumed_metrics.items() if isinstance(v, (int, float))
        },
        "resume_wall_s": round(resume_wall, 1),
    }


def _val(metrics: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in metrics.items() if k.startswith("val/") and "-" not in k)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=str(REPO / "experiments" / "smoke.yaml"))
    parser.add_argument("--trials", default=",".join(DEFAULT_TRIALS), help="comma-separated name patterns")
    parser.add_argument(
        "--compile-trial",
        default="gdxray-convnext_t-dinov3-full-s42",
        help="also run this trial with recipe.compile: true ('' to skip)",
    )
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers")
    parser.add_argument("--out", default=None, help="output folder (default: a temporary one, deleted)")
    parser.add_argument(
        "--allow-cpu",
        action="store_true",
        help="without a GPU, run the same script on CPU (to check it, not to measure)",
    )
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print(
            "engine_gpu: no CUDA device visible; this benchmark is for GPU machines "
            "(--allow-cpu runs it on CPU to check the script)",
            file=sys.stderr,
        )
        return 2
    from raybench.study import load_study

    study = load_study(args.study)
    patterns = [p for p in args.trials.split(",") if p]
    chosen = [t for t in study.trials if any(fnmatch.fnmatch(t.name, p) for p in patterns)]
    if not chosen:
        print(f"engine_gpu: no trial of {args.study} matches {patterns}", file=sys.stderr)
        return 2
    runs = [(t, False) for t in chosen]
    if args.compile_trial:
        runs += [(t, True) for t in study.trials if fnmatch.fnmatch(t.name, args.compile_trial)]
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="raybench-engine-gpu-"))
    results, failures = [], []
    for trial, compile_ in runs:
        spec = gpu_trial(trial, args.iterations, args.workers, compile_)
        label = trial.name + ("-compiled" if compile_ else "")
        try:
            r = run(spec, root / label)
        except Exception as exc:  # noqa: BLE001 - report every family, then fail
            failures.append({"trial": label, "error": f"{type(exc).__name__}: {exc}"})
            print(f"FAILED {label}: {type(exc).__name__}: {exc}", flush=True)
            continue
        results.append(r)
        print(
            f"{label:55s} {r['wall_s']:7.1f} s  peak {r['peak_mem_gib']:5.2f} GiB  "
            f"loss {r['final_losses'].get('train/loss')}  {_val(r['metrics'])}  "
            f"resumed: {_val(r['resumed_metrics'])}",
            flush=True,
        )
    if not args.out:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"runs": results, "failures": failures, "torch": torch.__version__}))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
