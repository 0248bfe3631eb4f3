#!/usr/bin/env python
"""Sweep overhead: a few short smoke trials through Ray Tune + Ray Train vs the same trials
run standalone (``raybench.engine.train`` in this process, one after the other).

Prints a table, then as its last line one JSON object:
``{"trials": N, "standalone_s": .., "ray_s": .., "ratio": .., "launch_s_mean": .., ...}``.

``ratio`` = Ray wall time (after Ray itself started) / standalone wall time for the same trials,
with the same concurrency (1 trial at a time, 1 CPU per worker) so that it measures overhead,
not parallelism. ``launch_s`` = from a trial's driver starting to its train worker running
(Ray Train controller + worker group start), read from each trial's status.json.

Usage: python benchmarks/sweep_overhead.py [--trials gdxray-*] [--iterations 6]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=str(REPO / "experiments" / "smoke.yaml"))
    parser.add_argument("--trials", default="gdxray-*", help="glob over trial names (default gdxray-*)")
    parser.add_argument("--iterations", type=int, default=None, help="override iterations per trial")
    parser.add_argument("--checkpoint-period", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the runs' folder (checkpoints: GBs)")
    args = parser.parse_args()

    import dataclasses

    import torch

    from raybench.engine import train
    from raybench.results.store import read_status
    from raybench.study import load_study
    from raybench.sweep import SweepOptions, run_study
    from raybench.sweep.runner import connect, prepare_synthetic

    study = load_study(args.study)
    trials = study.select(args.trials)
    if args.iterations or args.checkpoint_period:
        changed = []
        for t in trials:
            sched = dataclasses.replace(
                t.recipe.schedule, iterations=args.iterations or t.recipe.schedule.iterations
            )
            recipe = dataclasses.replace(
                t.recipe,
                schedule=sched,
                checkpoint_period=args.checkpoint_period or t.recipe.checkpoint_period,
            )
            changed.append(t.replace(recipe=recipe))
        trials = changed
        study = dataclasses.replace(study, trials=tuple(trials))
    prepare_synthetic(trials)
    work = Path(tempfile.mkdtemp(prefix="raybench-overhead-"))

    # Standalone: same trials, one thread like a 1-CPU Ray worker, in this process.
    torch.set_num_threads(1)
    standalone: dict[str, float] = {}
    t_all = time.perf_counter()
    for t in trials:
        t0 = time.perf_counter()
        train(t, work / "standalone" / t.name, verbose=False)
        standalone[t.name] = time.perf_counter() - t0
    standalone_s = time.perf_counter() - t_all

    # Through Ray: 1 driver CPU + 1 worker CPU on a 2-CPU local Ray = one trial at a time.
    options = SweepOptions(storage=str(work / "ray"), num_cpus=2, driver_cpus=1.0, only=args.trials)
    t0 = time.perf_counter()
    connect(options)
    ray_start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = run_study(study, options)
    ray_s = time.perf_counter() - t0
    failed = [n for n, s in summary.items() if s["error"]]
    status = read_status(str(work / "ray" / study.name))

    def column(key: str) -> dict[str, float]:
        return {n: float(s.get(key, float("nan"))) for n, s in status.items()}

    launch, engine = column("launch_s"), column("engine_s")
    wandb_s = {n: column("wandb_start_s")[n] + column("wandb_finish_s")[n] for n in status}

    print()
    print(f"{'trial':44s} {'standalone s':>12s} {'launch s':>9s} {'W&B s':>6s} {'engine s':>9s}")
    for name in sorted(standalone):
        print(
            f"{name:44s} {standalone[name]:12.1f} {launch.get(name, math.nan):9.1f} "
            f"{wandb_s.get(name, math.nan):6.1f} {engine.get(name, math.nan):9.1f}"
        )
    ratio = ray_s / standalone_s
    # Fixed cost of a trial through Ray: a trial that runs T seconds standalone takes about
    # T + overhead through Ray, so the ratio is about 1 + overhead / T.
    overhead = (ray_s - standalone_s) / max(1, len(trials))
    other = ray_s - sum(launch.values()) - sum(wandb_s.values()) - sum(engine.values())
    print(
        f"\n{len(trials)} trials: standalone {standalone_s:.1f} s; Ray Tune + Train {ray_s:.1f} s "
        f"(Ray started before, in {ray_start_s:.1f} s): ratio {ratio:.2f}; failed: {failed or 'none'}\n"
        f"Ray time = launch {sum(launch.values()):.1f} + W&B {sum(wandb_s.values()):.1f} "
        f"+ engine {sum(engine.values()):.1f} + rest {other:.1f} s (Tune trial start/stop, teardown)\n"
        f"fixed overhead per trial {overhead:.1f} s: ratio <= 1.3 for trials of >= {overhead / 0.3:.0f} s"
    )
    print(
        json.dumps(
            {
                "benchmark": "sweep_overhead",
                "trials": len(trials),
                "standalone_s": round(standalone_s, 2),
                "ray_s": round(ray_s, 2),
                "ratio": round(ratio, 3),
                "ray_start_s": round(ray_start_s, 2),
                "overhead_per_trial_s": round(overhead, 2),
                "engine_s": round(sum(engine.values()), 2),
                "wandb_s": round(sum(wandb_s.values()), 2),
                "rest_s": round(other, 2),
                "launch_s_mean": round(statistics.mean(launch.values()), 2) if launch else None,
                "launch_s_max": round(max(launch.values()), 2) if launch else None,
                "cpus": os.cpu_count(),
                "failed": failed,
            }
        )
    )
    if args.keep:
        print(f"runs kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
