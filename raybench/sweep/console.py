"""The sweep's console: what a user sees while the grid runs, and what goes to log files.

Ray, by default, streams every worker's stdout/stderr to the driver: Train's per-report
``Reporting training result N: TrainingReport(...)`` lines, its PlacementGroupCleaner's
warnings, C++ ``core_worker.cc`` messages, W&B's banners, the engine's per-iteration lines.
None of it is something a user acts on, and it buries what matters. So, by default:

- Ray starts with ``log_to_driver=False``: worker output stays in Ray's log files (the
  session's ``logs/`` folder, printed at the start) -- see :func:`ray_init_kwargs`;
- Tune's own output is off; :class:`~raybench.sweep.events.TrialEvents` (a
  ``tune.Callback``) prints the status table (every :data:`TABLE_PERIOD_S` seconds and at
  the end) and one line per trial event: started, resumed, evaluated (with its headline
  metric), checkpointed, finished, failed (with the reason recorded in status.json);
- raybench's own messages (``logging.getLogger("raybench.*")``) go to stdout with a
  ``[raybench]`` prefix (:func:`console_output`).

Verbosity: 0 (``-q``): warnings, failures and the final summary only; 1: the above;
2 (``--verbose``): everything, Ray's worker output and Tune's own tables included.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from raybench.console import DEFAULT, PREFIX, QUIET, VERBOSE, console_output

#: Seconds between two status tables (Tune's own default heartbeat is 30 s too).
TABLE_PERIOD_S = 30.0

log = logging.getLogger("raybench.sweep")


def worker_logging() -> None:
    """In a Ray worker process (a trial's driver, a Train worker): raybench's records to
    stderr, which Ray keeps in the worker's log file (and shows with ``--verbose``)."""
    logger = logging.getLogger("raybench")
    if any(getattr(h, "_raybench_worker", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(PREFIX + "%(message)s"))
    handler._raybench_worker = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def ray_init_kwargs(verbosity: int) -> dict[str, Any]:
    """What ``ray.init`` gets for this verbosity: worker output to the driver only when verbose."""
    return {"log_to_driver": verbosity >= VERBOSE}


def tune_verbose(verbosity: int) -> int:
    """Tune's own console output: only with ``--verbose`` (else ``TrialEvents`` speaks)."""
    return 1 if verbosity >= VERBOSE else 0


@contextlib.contextmanager
def tune_output(verbosity: int) -> Iterator[None]:
    """Around ``Tuner.fit``: below ``--verbose``, Tune's legacy output engine
    (``RAY_AIR_NEW_OUTPUT=0``), which at ``verbose=0`` prints nothing -- the new one prints its
    configuration box and result paths at any verbosity. A user's own setting wins."""
    key = "RAY_AIR_NEW_OUTPUT"
    if verbosity >= VERBOSE or key in os.environ:
        yield
        return
    os.environ[key] = "0"
    try:
        yield
    finally:
        os.environ.pop(key, None)


#: Driver messages of Ray's that a user cannot act on; the raylet also writes each to its log
#: (``raylet.out``). The worker-pool size warning fires at 4x the node's CPU count, i.e. on
#: any small node running the usual ~4 processes per trial (driver, Train controller, worker,
#: Ray Data's coordinator) -- the smoke study on 2 CPUs; it is not a leak.
RAY_DRIVER_NOISE = (" worker processes have been started on node: ",)


@contextlib.contextmanager
def ray_driver_messages(verbosity: int) -> Iterator[None]:
    """Below ``--verbose``, drop :data:`RAY_DRIVER_NOISE` from the messages Ray's driver prints
    from its error channel (printed whatever ``log_to_driver`` says); every other message (a
    task killed for memory, a node died, ...) still reaches the console."""
    import ray._private.worker as worker

    original = getattr(worker, "print_to_stdstream", None)  # a private name: absent -> no filter
    if verbosity >= VERBOSE or original is None:
        yield
        return

    def filtered(data: dict, ignore_prefix: bool) -> None:
        lines = [x for x in data.get("lines", []) if not any(n in str(x) for n in RAY_DRIVER_NOISE)]
        if lines:
            original({**data, "lines": lines}, ignore_prefix)

    worker.print_to_stdstream = filtered
    try:
        yield
    finally:
        worker.print_to_stdstream = original


def ray_logs_dir() -> str | None:
    """This node's Ray log folder (worker output, Ray internals), if Ray is up here."""
    try:
        import ray._private.worker as worker

        return str(worker._global_node.get_logs_dir_path())
    except Exception:  # noqa: BLE001 - a client connection or an older Ray: no local folder
        return None


@dataclass
class _Run:
    """What the events of the current run need (set by :func:`activate`)."""

    metric: dict[str, str]  # trial -> headline metric
    iterations: dict[str, int]  # trial -> last iteration
    status_of: Any  # trial -> its status.json (dict) or None
    verbosity: int
    started: float = field(default_factory=time.time)
    last_table: float = 0.0
    last_iter: dict[str, int] = field(default_factory=dict)
    last_value: dict[str, float] = field(default_factory=dict)


_ACTIVE: _Run | None = None


def active() -> _Run | None:
    """The run :func:`activate` set up, or None outside one."""
    return _ACTIVE


@contextlib.contextmanager
def activate(
    metric: dict[str, str], iterations: dict[str, int], status_of: Any, verbosity: int
) -> Iterator[None]:
    """Make :class:`~raybench.sweep.events.TrialEvents` speak for this run.

    The callback itself holds no state: Tune pickles it with the experiment, and a restored
    experiment brings back the callback of its first run -- it must report with the current
    run's study and verbosity."""
    global _ACTIVE
    _ACTIVE = _Run(metric, iterations, status_of, verbosity)
    try:
        yield
    finally:
        _ACTIVE = None


def trial_name(trial: Any) -> str:
    """The raybench trial name of a Tune trial (its config's ``trial``)."""
    config = getattr(trial, "config", None) or {}
    return str(config.get("trial", trial))


def num(value: Any) -> str:
    """A metric value, short."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def status_table(trials: list, run: _Run, now: float) -> str:
    """``trial status: 1 RUNNING | 1 PENDING (1 min 5 s)`` and one row per trial: its state,
    the last iteration reported, the last value of its headline metric."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[str(t.status)] = counts.get(str(t.status), 0) + 1
    elapsed = int(now - run.started)
    head = " | ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trial"
    rows = [("trial", "status", "iter", "headline metric")]
    for t in trials:
        name = trial_name(t)
        total = run.iterations.get(name)
        step = run.last_iter.get(name)
        it = f"{step}/{total}" if step is not None and total else "-"
        metric = run.metric.get(name, "")
        value = run.last_value.get(name)
        rows.append((name, str(t.status), it, f"{metric} = {num(value)}" if value is not None else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"trial status: {head} ({elapsed // 60} min {elapsed % 60:02d} s)"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
    return "\n".join(lines)


__all__ = [
    "DEFAULT",
    "QUIET",
    "VERBOSE",
    "activate",
    "active",
    "console_output",
    "ray_driver_messages",
    "ray_init_kwargs",
    "num",
    "ray_logs_dir",
    "status_table",
    "trial_name",
    "tune_output",
    "tune_verbose",
    "worker_logging",
]
