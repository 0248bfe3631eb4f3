"""``raybench`` command line: one sub-command per step of the flow.

Heavy imports (torch, Ray) happen inside each command, so ``raybench --help`` and
``raybench grid --dry-run`` stay fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from raybench.console import add_verbosity_arguments, console_output, verbosity
from raybench.study import Study, StudyError, TrialSpec, load_study


def _resources(t: TrialSpec) -> str:
    s = t.scaling
    per = f"{s.cpus_per_worker:g} CPU"
    if s.use_gpu:
        per = f"{s.gpus_per_worker:g} GPU, {per}"
    return f"{s.workers} x ({per})"


def trial_table(trials: Sequence[TrialSpec]) -> str:
    """The dry-run table: one line per trial, fixed-width columns."""
    header = (
        "trial",
        "dataset",
        "task",
        "decoder",
        "backbone",
        "pretraining",
        "regime",
        "seed",
        "iters",
        "batch",
        "resources",
    )
    rows = [header] + [
        (
            t.name,
            t.dataset.id,
            t.task,
            t.decoder,
            t.backbone.arch,
            t.backbone.pretraining,
            t.regime,
            str(t.seed),
            str(t.recipe.schedule.iterations),
            str(t.recipe.batch_size),
            _resources(t),
        )
        for t in trials
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_grid(args: argparse.Namespace) -> int:
    study: Study = load_study(args.study, dry_run=args.dry_run)
    trials = study.select(args.only)
    if args.json:
        print(json.dumps([t.to_dict() | {"name": t.name} for t in trials], indent=1))
        return 0
    print(f"study {study.name!r} ({study.source}): {study.description}")
    print(trial_table(trials))
    s = study.scaling
    gpus = len(trials) * s.workers * s.gpus_per_worker if s.use_gpu else 0
    driver = f"{s.driver_cpus:g} driver CPU" + ("" if s.driver_cpus == 1 else "s")
    print(
        f"\n{len(trials)} trials ({len(study.rows)} rows x {len(study.datasets)} datasets x "
        f"{len(study.seeds)} seeds"
        + (f" x {len(study.train_fractions)} train fractions" if len(study.train_fractions) > 1 else "")
        + f"); each needs {driver} + {_resources(trials[0])}; "
        f"{gpus:g} GPUs to run all at once."
    )
    if args.dry_run:
        print("dry run: dataset roots and weight files were not checked.")
    return 0


def _add_grid(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grid",
        help="validate a study file and print its trial table",
        description="Validate STUDY (every problem at once) and list its trials.",
    )
    p.add_argument("study", help="study YAML file, e.g. experiments/paper.yaml")
    p.add_argument(
        "--dry-run", action="store_true", help="do not require dataset roots or weight files to exist"
    )
    p.add_argument("--only", help="glob pattern(s) over trial names, comma-separated")
    p.add_argument("--json", action="store_true", help="print the trial specs as JSON")
    p.set_defaults(func=cmd_grid)


def cmd_preflight(args: argparse.Namespace) -> int:
    """Load the study (grid's checks where the data is visible), then the pre-flight checks;
    their report and messages are raybench's log records, on the console as every command's
    (:func:`raybench.console.console_output`, set up by :func:`main`)."""
    from raybench.errors import UserInputError
    from raybench.preflight import preflight
    from raybench.sweep.layout import ExperimentLayout

    if args.sample < 0:
        raise UserInputError(f"--sample must be >= 0 (images decoded per split), got {args.sample}")
    # Schema, option values, meta-built backbones here; everything on disk is the pre-flight's,
    # so one report lists every problem (grid's trial-start checks give YAML lines for some).
    study = load_study(args.study, dry_run=True)
    trials = study.select(args.only)
    storage = None
    if args.storage:
        storage = ExperimentLayout.create(args.storage, args.experiment or study.name).root
    mode = "local"
    if args.address or args.remote:
        from raybench.sweep.runner import SweepOptions, connect

        mode = connect(SweepOptions(address=args.address))
    preflight(study, trials, storage, mode=mode, sample=args.sample, remote=True if args.remote else None)
    return 0


def _add_preflight(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preflight",
        help="check what a study's trials will read and write before they start",
        description="Check STUDY's datasets (root, annotations, split counts, a sample of images), "
        "backbone weights (files fit; hub ids reachable with HF_TOKEN), storage and W&B, and report "
        "every problem at once (docs/preflight.md). `raybench run` runs it first.",
    )
    p.add_argument("study", help="study YAML file")
    p.add_argument("--only", help="glob pattern(s) over trial names, comma-separated")
    p.add_argument("--storage", help="experiment storage to probe (a folder or s3:// / gs:// URI)")
    p.add_argument("--experiment", help="experiment name under --storage (default: the study's name)")
    p.add_argument("--address", help="Ray cluster to join (checks run on a worker node when needed)")
    p.add_argument(
        "--remote", action="store_true", help="run the checks as a Ray task on a worker node, always"
    )
    p.add_argument("--sample", type=int, default=8, help="images decoded per split (default 8)")
    p.set_defaults(func=cmd_preflight)


# Commands contributed by the other packages: (module, function adding the sub-parser).
_PLUGINS: tuple[tuple[str, str], ...] = (
    ("raybench.data.cli", "add_data_commands"),
    ("raybench.engine.cli", "add_train_command"),
    ("raybench.sweep.cli", "add_run_command"),
    ("raybench.results.cli", "add_report_command"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raybench",
        description="Transfer-learning sweeps for industrial inspection on Ray "
        "(study -> sweep -> trial -> engine -> report).",
    )
    add_verbosity_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_grid(sub)
    _add_preflight(sub)
    import importlib

    for module_name, fn_name in _PLUGINS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("raybench"):
                continue  # that part of raybench is not built yet
            raise
        adder: Callable[[argparse._SubParsersAction], None] = getattr(module, fn_name)
        adder(sub)
    return parser


#: Set to 1 for the full traceback of an unexpected error instead of its one-line summary.
DEBUG_ENV = "RAYBENCH_DEBUG"


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input, printed as one line without a traceback.

    Only modules already imported are asked: an error of a module never imported cannot have
    been raised, and the CLI stays free of torch until a command needs it.
    """
    from raybench.errors import UserInputError

    found: list[type[BaseException]] = [StudyError, UserInputError]
    for module_name, names in (
        ("raybench.data.errors", ("DatasetFormatError", "DatasetOptionError", "DownloadError")),
        ("raybench.backbones", ("BackboneWeightsError",)),
    ):
        module = sys.modules.get(module_name)
        found += [getattr(module, n) for n in names if module is not None and hasattr(module, n)]
    return tuple(found)


def quiet_broken_pipe() -> int:
    """stdout's reader went away (``raybench grid ... | head``): stop quietly, like ``cat``.

    Python would otherwise print a BrokenPipeError when it flushes stdout at exit; pointing
    stdout at /dev/null first makes that flush a no-op (the Python docs' recipe).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a file descriptor (a test's capture): nothing to flush
    return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``raybench`` command; returns the exit status.

    Bad input (:func:`user_errors`) exits 2 with its message. An unexpected exception is a
    bug: its one-line summary and how to get the traceback (``RAYBENCH_DEBUG=1``); under
    pytest, or with that variable set, it propagates with its traceback.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # --help may meet a closed pipe too
        with console_output(verbosity(args)):  # raybench's log records: this command's console
            code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not as a message at interpreter exit
        return code
    except BrokenPipeError:
        return quiet_broken_pipe()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, user_errors()):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if os.environ.get(DEBUG_ENV) or "PYTEST_CURRENT_TEST" in os.environ:
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {exc}\n"
            f"(this is likely a bug in raybench; rerun with {DEBUG_ENV}=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
