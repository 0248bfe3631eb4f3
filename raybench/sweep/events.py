"""The sweep's trial events on the console: a ``tune.Callback`` (see :mod:`raybench.sweep.console`).

Separate from ``console`` because it subclasses a Ray class: importing it imports Ray Tune,
which only the sweep driver needs.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray import tune

from raybench.sweep.console import DEFAULT, QUIET, TABLE_PERIOD_S, active, log, num, status_table, trial_name


class TrialEvents(tune.Callback):
    """One console line per trial event, and the status table (see the module docstring)."""

    def _run(self) -> Any:
        return active()

    def _say(self, message: str, *args: Any, level: int = logging.INFO) -> None:
        run = self._run()
        if run is None or (run.verbosity <= QUIET and level < logging.WARNING):
            return
        log.log(level, message, *args)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say("%s: started", trial_name(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run = self._run()
        if run is None:
            return
        name = trial_name(trial)
        step = int(result.get("iter", 0) or 0)
        run.last_iter[name] = max(step, run.last_iter.get(name, 0))
        total = run.iterations.get(name)
        at = f"iteration {step}/{total}" if total else f"iteration {step}"
        if result.get("already_finished"):
            self._say("%s: already finished, not re-trained", name)
            return
        if result.get("resumed_from") is not None:
            self._say("%s: resumed from the checkpoint of iteration %d", name, int(result["resumed_from"]))
        metric = run.metric.get(name)
        if metric and metric in result:
            run.last_value[name] = float(result[metric])
            self._say("%s: evaluated at %s: %s = %s", name, at, metric, num(float(result[metric])))
        if result.get("checkpoint_path"):
            self._say("%s: checkpoint at %s", name, at)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run = self._run()
        if run is None:
            return
        name = trial_name(trial)
        metric = run.metric.get(name)
        status = run.status_of(name) or {}
        final = status.get("final") or {}
        value = final.get(metric, run.last_value.get(name)) if metric else None
        what = f" ({metric} = {num(float(value))})" if value is not None else ""
        self._say("%s: finished%s", name, what)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._failed(trial, "failed, Tune retries it", logging.WARNING)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._failed(trial, "failed", logging.ERROR)

    def _failed(self, trial: Any, what: str, level: int) -> None:
        run = self._run()
        if run is None:
            return
        name = trial_name(trial)
        status = run.status_of(name) or {}
        reason = status.get("message") if status.get("state") == "failed" else None
        if not reason:
            reason = f"see {getattr(trial, 'error_file', None) or 'the Ray logs'}"
        self._say("%s: %s: %s", name, what, reason, level=level)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        run = self._run()
        if run is None or run.verbosity != DEFAULT:
            return
        now = time.time()
        if now - run.last_table >= TABLE_PERIOD_S:
            run.last_table = now
            log.info("%s", status_table(trials, run, now))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        run = self._run()
        if run is not None and run.verbosity == DEFAULT:
            log.info("%s", status_table(trials, run, time.time()))


__all__ = ["TrialEvents"]
