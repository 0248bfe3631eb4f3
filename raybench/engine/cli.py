"""``raybench train STUDY --trial NAME``: one trial, in this process, without Ray."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def cmd_train(args: argparse.Namespace) -> int:
    from raybench.engine import train
    from raybench.errors import OutputDirError
    from raybench.probe import probe_folder
    from raybench.study import load_study

    study = load_study(args.study)
    trial = study.trial(args.trial)
    out = Path(args.out) if args.out else Path("runs") / study.name / trial.name
    # Before data and model are built: a read-only --out would fail only at the first write.
    probe_folder(out, OutputDirError, "output folder (--out)")
    # verbose: the run's progress (engine log records) on this console, unless logging was
    # configured elsewhere (then its handlers show them).
    final = train(trial, out, resume=args.resume, verbose=True)
    shown = {
        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in final.items() if "AP-" not in k
    }
    print(json.dumps(shown, indent=1, sort_keys=True))
    print(f"metrics: {out / 'metrics.jsonl'}  checkpoints: {out / 'checkpoints'}")
    return 0


def add_train_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train`` on the ``raybench`` command line."""
    p = subparsers.add_parser(
        "train",
        help="train one trial of a study in this process (no Ray)",
        description="Train trial NAME of STUDY here, without Ray; metrics go to DIR/metrics.jsonl "
        "(JSON lines) and checkpoints to DIR/checkpoints.",
    )
    p.add_argument("study", help="study YAML file, e.g. experiments/smoke.yaml")
    p.add_argument("--trial", required=True, help="trial name (see `raybench grid STUDY`)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/<study>/<trial>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in DIR (default: start over, replacing its metrics "
        "and checkpoints)",
    )
    p.set_defaults(func=cmd_train)
