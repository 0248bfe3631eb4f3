"""What a training run tells its user, through ``logging`` (the engine never prints).

Rank 0 logs, each line prefixed with ``[trial]``: the set-up (workers x micro-batches,
device, parameters trained, fast paths), one progress line per ``log_period`` (losses, LR,
throughput, ETA), each evaluation's metrics and each checkpoint
(:class:`~raybench.engine.sinks.LogReporter`), and the run's decisions (resume, out-of-memory
fallback, early stop). Where they appear is the application's choice: ``raybench train``'s
console, a Ray worker's log file (:mod:`raybench.sweep.console`). A plain ``train(...,
verbose=True)`` in a script or a test, where nothing configured raybench's loggers, shows them
on stdout for the run's duration (:meth:`Progress.console`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping

from raybench.console import console_output

log = logging.getLogger(__name__)
#: The logger whose records a run's console shows: every engine module's (loop, sinks, ...).
ENGINE_LOGGER = "raybench.engine"


def format_eta(seconds: float) -> str:
    """``h:mm:ss`` (``?`` when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _configured(logger: logging.Logger) -> bool:
    """Whether the application decided where ``logger``'s records go: a handler on a raybench
    logger (a CLI, a Ray worker, even a quiet one), or a root handler that takes INFO
    (``logging.basicConfig(level=INFO)``). Not: pytest's capture, which keeps root at WARNING."""
    root, current = logging.getLogger(), logger
    while current is not None:
        if current.handlers and (current is not root or logger.isEnabledFor(logging.INFO)):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


class Progress:
    """A run's messages: INFO when ``enabled`` (rank 0 with ``verbose``), else DEBUG (kept out of
    the console, there for whoever asks the logger for it)."""

    def __init__(self, trial: str, *, enabled: bool) -> None:
        self.prefix = f"[{trial}] "
        self.enabled = enabled
        self.level = logging.INFO if enabled else logging.DEBUG

    def __call__(self, message: str) -> None:
        log.log(self.level, "%s%s", self.prefix, message)

    def window(
        self, done: int, total: int, means: Mapping[str, float], lr: float, imgs_per_s: float, eta: float
    ) -> None:
        """The progress line of one logging window: mean losses, LR, throughput, ETA."""
        terms = ", ".join(f"{k} {v:.3f}" for k, v in means.items())
        self(
            f"iter {done}/{total}  loss {sum(means.values()):.4f} ({terms})  lr {lr:.3g}  "
            f"{imgs_per_s:.1f} img/s  eta {format_eta(eta)}"
        )

    @contextlib.contextmanager
    def console(self) -> Iterator[None]:
        """For the run's duration, the engine's records on stdout -- only when this run is
        verbose and nothing configured the ``raybench`` loggers (else their handlers decide)."""
        engine = logging.getLogger(ENGINE_LOGGER)
        if not self.enabled or _configured(engine):
            yield
            return
        with console_output(logger=engine.name, fmt="%(message)s"):
            yield
