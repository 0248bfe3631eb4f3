#!/usr/bin/env python
"""Wall time of the whole smoke grid through Ray, today's study against the reference one,
measured one after the other on the same machine (issue 18: "within about 1.3x").

Why a script: wall time on a shared machine moves with everybody's load, so the two grids
must run back to back, each on a private local Ray of the same size, with their synthetic
data written beforehand (both grids then time training, evaluation, checkpoints and Ray's
own per-trial start-up, not data generation) and the load average recorded beside them.

Each study is copied into its own temporary folder (its relative data roots land there),
run with ``experiments/run_grid.py --num-cpus N`` (a local Ray, not a cluster found on the
node), and its runs deleted afterwards (a ConvNeXt-T checkpoint is ~0.3 GB).

Prints one line per grid, then one JSON object:
``{"reference_s": .., "study_s": .., "ratio": .., "load": {...}, ...}``.

Usage: python benchmarks/smoke_walltime.py [--study experiments/smoke.yaml]
       [--reference benchmarks/smoke_baseline.yaml] [--num-cpus 2] [--order reference,study]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def stage(study: Path, folder: Path) -> Path:
    """A copy of ``study`` at ``folder/experiments/``, its synthetic data written."""
    from raybench.study import load_study
    from raybench.sweep.runner import prepare_synthetic

    copy = folder / "experiments" / study.name
    copy.parent.mkdir(parents=True)
    shutil.copy(study, copy)
    prepare_synthetic(list(load_study(copy).trials))
    return copy


def run_grid(study: Path, storage: Path, num_cpus: int, extra: list[str]) -> dict:
    """One whole grid; wall time, load averages, trial states."""
    from raybench.results.store import read_status
    from raybench.study import load_study

    name = load_study(study).name
    cmd = [sys.executable, str(REPO / "experiments" / "run_grid.py"), "--study", str(study)]
    cmd += ["--storage", str(storage), "--num-cpus", str(num_cpus), "-q", *extra]
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    status = read_status(str(storage / name)) if (storage / name).exists() else {}
    states = [s.get("state") for s in status.values()]
    return {
        "study": str(study.name),
        "rc": proc.returncode,
        "wall_s": round(wall, 1),
        "trials": len(states),
        "finished": states.count("finished"),
        "load_before": [round(x, 2) for x in load0],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "tail": proc.stdout[-1500:] + proc.stderr[-1500:] if proc.returncode else "",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=REPO / "experiments" / "smoke.yaml")
    parser.add_argument("--reference", type=Path, default=REPO / "benchmarks" / "smoke_baseline.yaml")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of each private local Ray (default 2)")
    parser.add_argument(
        "--order", default="reference,study", help="which grid first (default reference,study)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the runs (GBs of checkpoints)")
    args, extra = parser.parse_known_args()
    order = [x.strip() for x in args.order.split(",")]
    if sorted(order) != ["reference", "study"]:
        parser.error("--order must name reference and study once each")

    work = Path(tempfile.mkdtemp(prefix="raybench-smoke-walltime-"))
    paths = {"reference": args.reference.resolve(), "study": args.study.resolve()}
    staged = {k: stage(p, work / k) for k, p in paths.items()}
    rows = {}
    for key in order:
        row = run_grid(staged[key], work / key / "runs", args.num_cpus, extra)
        rows[key] = row
        print(
            f"{key:9s} {paths[key].name:22s} {row['wall_s']:7.1f} s  "
            f"{row['finished']}/{row['trials']} finished  "
            f"load {row['load_before']} -> {row['load_after']}  rc {row['rc']}",
            flush=True,
        )
        if row["rc"]:
            print(row["tail"], file=sys.stderr)
        if not args.keep:
            shutil.rmtree(work / key / "runs", ignore_errors=True)
    ratio = rows["study"]["wall_s"] / rows["reference"]["wall_s"]
    print(
        json.dumps(
            {
                "benchmark": "smoke_walltime",
                "reference_s": rows["reference"]["wall_s"],
                "study_s": rows["study"]["wall_s"],
                "ratio": round(ratio, 3),
                "order": order,
                "num_cpus": args.num_cpus,
                "cpus": os.cpu_count(),
                "grids": {k: {x: v for x, v in r.items() if x != "tail"} for k, r in rows.items()},
            }
        )
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(r["rc"] for r in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
