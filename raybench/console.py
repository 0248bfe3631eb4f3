"""What the ``raybench`` commands show on the console, and how loud (``-q`` / ``--verbose``).

Library code never prints: it logs through ``logging.getLogger(__name__)`` (every logger under
``raybench``). A command is an application: :func:`console_output` puts raybench's records on
stdout, prefixed ``[raybench]``, for the command's duration. Verbosity: 0 (``-q``): warnings,
failures and records marked ``extra={"always": True}``; 1 (default): raybench's messages;
2 (``--verbose``): the same here, plus whatever each command adds (the sweep: Ray's worker
output and Tune's own tables, see :mod:`raybench.sweep.console`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

QUIET, DEFAULT, VERBOSE = 0, 1, 2
PREFIX = "[raybench] "
ROOT_LOGGER = "raybench"


class _Stdout(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout`` is at the time (pytest's capture, a
    redirect), not the stream of the moment it was created."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _Verbosity(logging.Filter):
    """Quiet mode lets through warnings and records marked ``extra={"always": True}``."""

    def __init__(self, verbosity: int) -> None:
        super().__init__()
        self.verbosity = verbosity

    def filter(self, record: logging.LogRecord) -> bool:
        return self.verbosity > QUIET or record.levelno >= logging.WARNING or getattr(record, "always", False)


@contextlib.contextmanager
def console_output(
    verbosity: int = DEFAULT, *, logger: str = ROOT_LOGGER, fmt: str = PREFIX + "%(message)s"
) -> Iterator[None]:
    """``logger``'s records from INFO up on stdout (as ``fmt``) for the duration; removed again
    afterwards and the logger's level restored. Nested calls for the same logger add nothing
    (``raybench run`` and the ``run_study`` it calls both ask), so no line shows twice."""
    target = logging.getLogger(logger)
    if any(getattr(h, "_raybench_console", False) for h in target.handlers):
        yield
        return
    handler = _Stdout()
    handler._raybench_console = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(_Verbosity(verbosity))
    old_level = target.level
    target.addHandler(handler)
    if target.getEffectiveLevel() > logging.INFO:
        target.setLevel(logging.INFO)
    try:
        yield
    finally:
        sys.stdout.flush()
        target.removeHandler(handler)
        target.setLevel(old_level)


def add_verbosity_arguments(parser: argparse.ArgumentParser, *, inherited: bool = False) -> None:
    """``--verbose`` / ``-q``. ``inherited``: a sub-command's copy of the top-level flags (no
    default of its own, so ``raybench -q run`` and ``raybench run -q`` mean the same)."""
    default: Any = argparse.SUPPRESS if inherited else False
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="show everything on the console (a sweep: the workers' output, Ray's own messages, "
        "Tune's tables; by default the rest is in the log files named at the start)",
    )
    talk.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="only warnings, failures and the final summary",
    )


def verbosity(args: argparse.Namespace) -> int:
    """``-q`` -> :data:`QUIET`, default -> :data:`DEFAULT`, ``--verbose`` -> :data:`VERBOSE`."""
    if getattr(args, "quiet", False):
        return QUIET
    return VERBOSE if getattr(args, "verbose", False) else DEFAULT
