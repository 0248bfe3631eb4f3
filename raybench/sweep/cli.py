"""``raybench run STUDY``: the whole study on Ray (same as experiments/run_grid.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from raybench.console import add_verbosity_arguments, verbosity
from raybench.study import Study


def add_sweep_arguments(p: argparse.ArgumentParser, *, inherited: bool = False) -> None:
    """The sweep's options (``raybench run`` and ``experiments/run_grid.py``); ``inherited``:
    ``--verbose`` / ``-q`` are also the top-level ``raybench`` flags."""
    p.add_argument(
        "--storage",
        default="runs",
        help="experiment storage: a local folder or s3:// / gs:// URI (default: runs)",
    )
    p.add_argument("--experiment", help="experiment name (default: the study's name)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="restore the experiment: unfinished and errored trials continue from "
        "their last checkpoint; finished trials are not re-run",
    )
    p.add_argument(
        "--restart-errored",
        action="store_true",
        help="with --resume: start errored trials from scratch instead (their checkpoints are "
        "deleted; finished trials are never touched)",
    )
    p.add_argument(
        "--only",
        help="glob pattern(s) over trial names, comma-separated (a new experiment only: "
        "--resume restores the trials the experiment started with)",
    )
    p.add_argument(
        "--address", help="Ray cluster address (default: RAY_ADDRESS, a running cluster, else a local Ray)"
    )
    p.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    p.add_argument(
        "--driver-cpus",
        type=float,
        default=None,
        help="CPUs reserved for each trial's driver (default: the study's scaling.driver_cpus)",
    )
    p.add_argument(
        "--worker-retries",
        type=int,
        default=2,
        help="restarts of a trial's train workers from its last checkpoint (default 2)",
    )
    p.add_argument(
        "--trial-retries", type=int, default=1, help="Tune-level retries of a failed trial (default 1)"
    )
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    add_verbosity_arguments(p, inherited=inherited)
    p.add_argument(
        "--skip-preflight",
        action="store_true",
        help="do not run the pre-flight checks (data, weights and hub access, storage, W&B) before "
        "the trials start (docs/preflight.md)",
    )


def load_for_run(path: str, only: str | None, skip_preflight: bool) -> Study:
    """The study, with the trial-start checks of ``grid`` where this machine sees the data.

    When a dataset root or weights file is not visible here (it may live only on the worker
    nodes), those checks are left to the pre-flight, which runs them on a worker node."""
    from raybench.preflight import not_visible_here
    from raybench.study import load_study

    if skip_preflight:
        return load_study(path)
    study = load_study(path, dry_run=True)
    hidden = not_visible_here(study, study.select(only))
    if not hidden:
        return load_study(path)
    print(
        f"[raybench] not visible on this machine: {', '.join(hidden[:4])}"
        + (f" (+{len(hidden) - 4})" if len(hidden) > 4 else "")
        + "; the pre-flight checks them where the trials run"
    )
    return study


def cmd_run(args: argparse.Namespace) -> int:
    from raybench.sweep.runner import SweepOptions, run_study

    study = load_for_run(args.study, args.only, args.skip_preflight)
    options = SweepOptions(
        storage=args.storage,
        experiment=args.experiment,
        resume=args.resume,
        restart_errored=args.restart_errored,
        only=args.only,
        address=args.address,
        num_cpus=args.num_cpus,
        driver_cpus=args.driver_cpus,
        worker_retries=args.worker_retries,
        trial_retries=args.trial_retries,
        no_report=args.no_report,
        skip_preflight=args.skip_preflight,
        verbosity=verbosity(args),
    )
    summary = run_study(study, options)
    if not args.no_report:
        from raybench.results.report import build_report
        from raybench.sweep.layout import ExperimentLayout

        layout = ExperimentLayout.create(options.storage, options.experiment or study.name)
        out = Path("results") / layout.name if "://" in layout.root else Path(layout.root) / "report"
        result = build_report(layout.root, out, study=study)
        print(f"[raybench] report: {getattr(result, 'markdown', out)}")
    return 1 if any(s["error"] for s in summary.values()) else 0


def add_run_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a study's trials on Ray (Tune + Train), then report",
        description="Run every trial of STUDY as a Ray Train job in a Ray Tune "
        "sweep; resumable; W&B + Parquet tracking.",
    )
    p.add_argument("study", help="study YAML file")
    add_sweep_arguments(p, inherited=True)
    p.set_defaults(func=cmd_run)
