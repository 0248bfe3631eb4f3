#!/usr/bin/env python
"""Per-trial CPU cost and learning curve of a study's trials, run standalone (no Ray).

Why: the smoke study must learn within a small compute budget, and on a shared 2-core
machine wall time is mostly other people's load. Each trial runs in its own process with one
torch thread (what a 1-CPU Ray worker gets) and the script reads CPU time, which an idle
core turns into about the same wall time: the process's total from the kernel, and a split
by phase measured inside it (``time.process_time`` around the engine loop's evaluation and
checkpoint calls, and at its per-iteration call; :data:`HOOKS`):

- ``start_s``: imports, data, model build: everything before the first iteration;
- ``iter_s``: CPU seconds per training iteration (iterations 2..N, evaluations and
  checkpoints taken out);
- ``eval_s`` / ``ckpt_s``: per evaluation / per checkpoint write;
- ``other_s``: the rest (final per-image records, the process's exit).

Also the headline metric at every evaluation (and box AP50 for instance segmentation) and
the load average. One line per trial on stdout and in ``OUT/cost.jsonl``.

Usage: python benchmarks/smoke_cost.py STUDY [--trials '*-full-*'] [--jobs 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
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
PHASES = "phases.json"


#: Where the engine's loop calls its phases, newest layout first: (module, name) per phase.
HOOKS = {
    "eval": (("raybench.engine.loop", "evaluate_run"), ("raybench.engine.loop", "evaluate")),
    "ckpt": (("raybench.engine.loop", "save_run_checkpoint"), ("raybench.engine.loop", "save_checkpoint")),
    "step": (("raybench.engine.loop", "train_iteration"), ("raybench.engine.loop", "clip_gradients")),
}


def hook(phase: str, wrap) -> None:
    """Replace the first of ``HOOKS[phase]`` the engine has by ``wrap(original)``."""
    import importlib

    for module_name, name in HOOKS[phase]:
        module = importlib.import_module(module_name)
        if hasattr(module, name):
            setattr(module, name, wrap(getattr(module, name)))
            return
    raise SystemExit(f"smoke_cost: the engine has none of {HOOKS[phase]} to time its {phase!r} phase")


def child(study_path: Path, name: str, out: Path) -> None:
    """Train one trial in this process, timing its phases in CPU seconds."""
    import torch

    torch.set_num_threads(1)
    from raybench.engine import train
    from raybench.study import load_study

    cpu = time.process_time
    acc: dict = {"eval": [], "ckpt": [], "steps": []}

    def timed(key):
        def wrap(fn):
            def wrapper(*args, **kwargs):
                t0 = cpu()
                try:
                    return fn(*args, **kwargs)
                finally:
                    acc[key].append(cpu() - t0)

            return wrapper

        return wrap

    def step(fn):
        def wrapper(*args, **kwargs):
            acc["steps"].append((cpu(), sum(acc["eval"]) + sum(acc["ckpt"])))
            return fn(*args, **kwargs)

        return wrapper

    # The loop looks these names up in its own module at call time.
    hook("eval", timed("eval"))
    hook("ckpt", timed("ckpt"))
    hook("step", step)
    train(load_study(study_path).trial(name), out, verbose=False, resume=False)
    steps = acc["steps"]
    (t_first, o_first), (t_last, o_last) = steps[0], steps[-1]
    phases = {
        "start_s": t_first,
        "iter_s": (t_last - t_first - (o_last - o_first)) / max(1, len(steps) - 1),
        "eval_s": sum(acc["eval"]) / max(1, len(acc["eval"])),
        "evals": len(acc["eval"]),
        "ckpt_s": sum(acc["ckpt"]) / max(1, len(acc["ckpt"])),
        "ckpts": len(acc["ckpt"]),
        "iters": len(steps),
    }
    (out / PHASES).write_text(json.dumps(phases))


def curve(metrics: Path, key: str) -> list[float]:
    """``key`` at every evaluation, in %."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [round(float(r[key]), 2) for r in rows if r.get(key) is not None]


def run_one(study: Path, trial: str, out: Path, threads: int) -> dict:
    """One trial in a fresh process; its total CPU time from the kernel (``os.wait4``)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.setdefault("WANDB_MODE", "disabled")
    log = out / f"{trial}.log"
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(study), trial, str(out / trial)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    shutil.rmtree(out / trial / "checkpoints", ignore_errors=True)  # ~0.3 GB per ConvNeXt-T trial
    row: dict = {
        "trial": trial,
        "rc": os.waitstatus_to_exitcode(status),
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "load": [round(load0, 1), round(os.getloadavg()[0], 1)],
    }
    if row["rc"] != 0:
        row["error"] = log.read_text()[-2000:]
        return row
    row.update(
        {
            k: round(v, 3) if isinstance(v, float) else v
            for k, v in json.loads((out / trial / PHASES).read_text()).items()
        }
    )
    # what the phases leave out: the final records, the process's exit
    accounted = row["start_s"] + row["iters"] * row["iter_s"] + row["evals"] * row["eval_s"]
    row["other_s"] = round(row["cpu_s"] - accounted - row["ckpts"] * row["ckpt_s"], 1)
    spec = json.loads((out / trial / "trial.json").read_text())
    metrics = out / trial / "metrics.jsonl"
    row["metric"] = spec["dataset"]["metric"]
    row["curve"] = curve(metrics, row["metric"])
    if spec["dataset"]["task"] == "instance":
        row["box_AP50"] = curve(metrics, "val/box_AP50")
    return row


def describe(row: dict) -> str:
    if row["rc"]:
        return f"{row['trial']:46s} FAILED rc {row['rc']}: {row['error'][-600:]}"
    extra = f" box_AP50 {row['box_AP50']}" if "box_AP50" in row else ""
    return (
        f"{row['trial']:46s} cpu {row['cpu_s']:6.1f} = start {row['start_s']:5.1f} + {row['iters']} x "
        f"{row['iter_s']:.3f} + {row['evals']} x eval {row['eval_s']:.2f} + {row['ckpts']} x ckpt "
        f"{row['ckpt_s']:.2f} + {row['other_s']:.1f} | wall {row['wall_s']:6.1f} load {row['load']} | "
        f"{row['metric']} {row['curve']}{extra}"
    )


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument(
        "--trials", default="*", help="glob(s) over trial names, comma-separated (default: all)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="trials at once (default 2, as the smoke grid)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="runs folder (default: a temporary one)")
    args = parser.parse_args()

    from raybench.study import load_study
    from raybench.sweep.runner import prepare_synthetic

    study = load_study(args.study)
    globs = [g.strip() for g in args.trials.split(",") if g.strip()]
    trials = [t for t in study.trials if any(fnmatch.fnmatch(t.name, g) for g in globs)]
    if not trials:
        parser.error(f"no trial of {args.study} matches {args.trials!r}")
    prepare_synthetic(trials)  # data written before timing, as a grid's second run finds it
    out = args.out or Path(tempfile.mkdtemp(prefix="raybench-smoke-cost-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"{len(trials)} trials of {args.study}, {args.jobs} at once, runs in {out}", flush=True)
    rows = []
    with (
        concurrent.futures.ThreadPoolExecutor(args.jobs) as pool,
        (out / "cost.jsonl").open("a") as sink,
    ):
        futures = [pool.submit(run_one, args.study.resolve(), t.name, out, args.threads) for t in trials]
        for future in concurrent.futures.as_completed(futures):
            row = future.result()
            rows.append(row)
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            print(describe(row), flush=True)
    total = sum(r["cpu_s"] for r in rows)
    print(f"total cpu {total:.1f} s over {len(rows)} trials; failed: {[r['trial'] for r in rows if r['rc']]}")
    return 1 if any(r["rc"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
