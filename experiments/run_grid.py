#!/usr/bin/env python
"""Run a raybench study on Ray: ``python experiments/run_grid.py [--study FILE] [...]``.

Thin wrapper over ``raybench run`` (see ``--help``): joins a running cluster (RAY_ADDRESS,
or the one `ray up` started) or starts a local Ray, runs every trial, then writes the report.
Default study: the smoke study (synthetic data, CPU, minutes).
Console: the status table, one line per trial event and raybench's messages; the workers'
output and Ray's own messages go to the log files named at the start (``--verbose``: all of it
on the console too; ``-q``: warnings, failures and the summary only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raybench.cli import main as raybench_main  # noqa: E402
from raybench.cli import quiet_broken_pipe  # noqa: E402
from raybench.sweep.cli import add_sweep_arguments  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `run_grid.py --help | head`: stop quietly
        return quiet_broken_pipe()


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--study",
        default=str(Path(__file__).with_name("smoke.yaml")),
        help="study YAML (default: experiments/smoke.yaml)",
    )
    add_sweep_arguments(parser)
    args, _ = parser.parse_known_args(argv)
    forwarded = ["run", args.study] + (argv if argv is not None else sys.argv[1:])
    if "--study" in forwarded:
        i = forwarded.index("--study")
        del forwarded[i : i + 2]
    return raybench_main(forwarded)


if __name__ == "__main__":
    sys.exit(main())
