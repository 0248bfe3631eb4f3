"""Failure drills: faults injected on purpose, to prove the sweep survives them.

Both are driven by environment variables the sweep forwards to the Ray Train workers
(:data:`raybench.sweep.workerenv.FORWARDED_ENV`), so a test -- or a cautious user before a
long run -- sets one variable and runs the study as usual:

- ``RAYBENCH_FAULT_INJECT="<trial glob>@<iter>"`` (:data:`FAULT_ENV`): SIGKILL the train worker
  once when it reports that iteration (:func:`maybe_inject_fault`); a lost worker must cost
  only the iterations since the last checkpoint.
- ``RAYBENCH_NAN_INJECT="<trial glob>@<iter>[:<term>]"`` (:data:`NAN_ENV`): a NaN loss term
  (:func:`nan_task_wrapper`, handed to the engine's ``train(task_wrapper=...)``); the trial
  must fail once, with the engine's own message, and not be retried.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from raybench.storage import resolve
from raybench.study import TrialSpec
from raybench.sweep.layout import ExperimentLayout

FAULT_ENV = "RAYBENCH_FAULT_INJECT"
NAN_ENV = "RAYBENCH_NAN_INJECT"

log = logging.getLogger(__name__)


def maybe_inject_fault(trial: str, iteration: int, layout: ExperimentLayout) -> None:
    """Fault drill: SIGKILL this train worker if :data:`FAULT_ENV` names ``trial`` at
    ``iteration``, once (a marker file ``fault-injected-at-<iter>`` in the trial folder stops
    it from firing again, also after ``--restart-errored``)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or "@" not in spec:
        return
    pattern, _, at = spec.rpartition("@")
    if not fnmatch.fnmatchcase(trial, pattern) or iteration != int(at):
        return
    fs, path = resolve(layout.trial_dir(trial))
    marker = f"{path}/fault-injected-at-{iteration}"
    if fs.get_file_info(marker).type.name != "NotFound":
        return
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(marker) as f:
        f.write(str(os.getpid()).encode())
    log.warning("fault drill: killing the train worker of %s at iteration %d", trial, iteration)
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class NanLoss:
    """A task whose ``train_step`` returns a NaN ``term`` at iteration ``at`` (1-based, as in
    the metrics); everything else is the wrapped task's."""

    def __init__(self, task: Any, at: int, term: str | None, start: int, accum: int) -> None:
        self._task, self._at, self._term = task, at, term
        self._start, self._accum, self._calls = start, accum, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def train_step(self, model: Any, batch: Any) -> Any:
        losses = self._task.train_step(model, batch)
        iteration = self._start + self._calls // self._accum + 1
        self._calls += 1
        if iteration != self._at:
            return losses
        term = self._term or next(iter(losses))
        if term not in losses:
            raise ValueError(f"{NAN_ENV}: no loss term {term!r} (terms: {', '.join(losses)})")
        return dict(losses) | {term: losses[term] * float("nan")}


def nan_task_wrapper(trial: TrialSpec, start: int, world_size: int) -> Callable[[Any], Any] | None:
    """NaN drill: the engine's ``task_wrapper`` when :data:`NAN_ENV` names ``trial``, else None.

    The loss term ``<term>`` (default: the task's first) is NaN at iteration ``<iter>`` every
    time that iteration is trained (a real non-finite loss is deterministic too), so the
    engine stops with its ``NonFiniteLossError``. ``start``: the iteration training resumes
    after (0 for a fresh start); ``world_size``: the workers (for the accumulation steps).
    """
    spec = os.environ.get(NAN_ENV, "")
    pattern, _, rest = spec.rpartition("@")
    at, _, term = rest.partition(":")
    if not pattern or not at.isdigit() or not fnmatch.fnmatchcase(trial.name, pattern):
        return None
    scaling = dataclasses.replace(trial.scaling, workers=world_size)
    _, accum = scaling.per_worker_batch(trial.recipe.batch_size)

    def wrap(task: Any) -> Any:
        return NanLoss(task, int(at), term or None, start, accum)

    return wrap


__all__ = ["FAULT_ENV", "NAN_ENV", "NanLoss", "maybe_inject_fault", "nan_task_wrapper"]
