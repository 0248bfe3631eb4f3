"""``raybench report EXPERIMENT``: Table 2 vs the paper, learning curves, cost."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: The default resamples, ``raybench.results.bootstrap.RESAMPLES`` (not imported: numpy would
#: slow down ``raybench --help``). Fewer are allowed for a quick look, with a warning: the
#: interval ends (2.5th / 97.5th percentiles) then rest on few draws and move with the seed.
RECOMMENDED_RESAMPLES = 1000


def default_out(experiment: str) -> Path:
    """``<experiment>/report`` for a local folder, ``results/<name>`` for a URI."""
    if "://" in experiment:
        return Path("results") / experiment.rstrip("/").rsplit("/", 1)[-1]
    return Path(experiment) / "report"


def check_experiment(experiment: str) -> None:
    """Refuse (:class:`~raybench.errors.UserInputError`) an experiment that is missing, not a
    folder, or holds no raybench trial record (``status.json`` or a results Parquet part).

    Why: the report of such a folder would be empty, and an exit status 0 with an empty
    report looks like "no trial ran" rather than "wrong path".
    """
    import pyarrow.fs as pafs

    from raybench.errors import UserInputError
    from raybench.results.store import STATUS_FILE
    from raybench.storage import resolve

    if "://" not in experiment:
        folder = Path(experiment)
        if not folder.exists():
            raise UserInputError(f"experiment folder not found: {folder}")
        if not folder.is_dir():
            raise UserInputError(f"experiment {folder} is not a folder")
    try:
        fs, path = resolve(experiment)
        files = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise UserInputError(f"experiment {experiment} cannot be listed: {exc}") from None
    names = {f.base_name for f in files if f.type == pafs.FileType.File}
    if STATUS_FILE not in names and not any(n.endswith(".parquet") for n in names):
        raise UserInputError(
            f"experiment {experiment} holds no raybench trial records (no trials/*/{STATUS_FILE}, "
            "no results/*.parquet); give the folder `raybench run` wrote: <storage>/<experiment>, "
            "e.g. runs/smoke"
        )


def resamples_arg(text: str) -> int:
    """``--bootstrap-resamples``: a whole number >= 1 (argparse turns the error into usage +
    one ``error:`` line, exit status 2)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of resamples >= 1 ({RECOMMENDED_RESAMPLES} or more for reported "
            f"intervals), got {text!r}"
        )
    return n


def seed_arg(text: str) -> int:
    """``--bootstrap-seed``: a whole number >= 0 (numpy's seed sequences take no negatives)."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return n


def cmd_report(args: argparse.Namespace) -> int:
    from raybench.errors import OutputDirError
    from raybench.probe import probe_folder
    from raybench.results.report import build_report

    check_experiment(args.experiment)
    if args.bootstrap_resamples < RECOMMENDED_RESAMPLES:
        print(
            f"warning: --bootstrap-resamples {args.bootstrap_resamples} is below {RECOMMENDED_RESAMPLES}: "
            "the interval ends rest on few resamples and move with --bootstrap-seed (docs/report.md)",
            file=sys.stderr,
        )
    study = None
    if args.study:
        from raybench.study import load_study

        study = load_study(args.study, dry_run=True)  # the report needs no data
    out = Path(args.out) if args.out else default_out(args.experiment)
    probe_folder(out, OutputDirError, "report folder" + (" (--out)" if args.out else ""))
    result = build_report(
        args.experiment,
        out,
        study=study,
        paper_csv=Path(args.paper) if args.paper else None,
        wandb=False if args.no_wandb else None,
        wandb_project=args.wandb_project,
        wandb_entity=args.wandb_entity,
        bootstrap_resamples=args.bootstrap_resamples,
        bootstrap_seed=args.bootstrap_seed,
    )
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items())) or "no trials"
    print(f"[raybench] report for study {result.study!r} ({counts}): {result.markdown}")
    return 0


def add_report_command(sub: argparse._SubParsersAction) -> None:
    """Register ``raybench report`` on the main CLI."""
    p = sub.add_parser(
        "report",
        help="Table 2 next to the paper, learning curves and cost of an experiment",
        description="Read every trial's Parquet results and status below EXPERIMENT (a folder "
        "or s3:// / gs:// URI) and write report.md, table2.csv, paired_deltas.csv, cost.csv and "
        "curves_<dataset>.png; with WANDB_API_KEY also a W&B Report.",
    )
    p.add_argument("experiment", help="experiment folder or URI (e.g. runs/smoke, s3://bucket/runs/paper)")
    p.add_argument("--out", help="output folder (default: EXPERIMENT/report, or results/<name> for a URI)")
    p.add_argument("--study", help="study YAML: never-started trials then show as missing")
    p.add_argument("--paper", help="paper numbers CSV (default: the packaged paper_table2.csv)")
    p.add_argument("--no-wandb", action="store_true", help="do not build a W&B Report")
    p.add_argument("--wandb-project", help="W&B project of the runs (default: WANDB_PROJECT or raybench)")
    p.add_argument("--wandb-entity", help="W&B entity (default: WANDB_ENTITY or your default entity)")
    p.add_argument(
        "--bootstrap-resamples",
        type=resamples_arg,
        default=RECOMMENDED_RESAMPLES,
        metavar="N",
        help=f"resamples of the bootstrap intervals (default {RECOMMENDED_RESAMPLES}; fewer: a warning)",
    )
    p.add_argument(
        "--bootstrap-seed",
        type=seed_arg,
        default=0,
        metavar="S",
        help="seed of the bootstrap's random draws (default 0; the same seed gives the same intervals)",
    )
    p.set_defaults(func=cmd_report)
