"""Metric sinks: where the engine's reports (metrics and checkpoint folders) go.

The engine calls ``report(metrics, checkpoint)`` on every worker at the same iterations
(Ray Train expects all ranks to report); ``checkpoint`` is the folder just written, given
to rank 0 only. A reporter may also answer ``should_stop()`` (e.g. a scheduler pruning the
trial): the engine then checkpoints and returns early, and may take
``report_records(trial, iteration, records)``: the per-image records of the trial's final
evaluation (:mod:`raybench.evaluation.records`, for bootstrap intervals), given on every
worker (each holds all workers' records) once, when the trial ends. Ray's reporter lives in
``raybench.sweep``; this module has the ones that need nothing but the file system and
``logging``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)
#: The metrics file of a run folder (rank 0 writes it: :class:`JsonlReporter`).
METRICS_FILE = "metrics.jsonl"


@runtime_checkable
class Reporter(Protocol):
    """Receives metric dicts; ``checkpoint`` is a checkpoint folder or None."""

    def report(self, metrics: dict[str, float], checkpoint: Path | None = None) -> None: ...


def should_stop(reporter: Reporter | None) -> bool:
    """The reporter's optional ``should_stop()`` (False when it has none)."""
    fn = getattr(reporter, "should_stop", None)
    return bool(fn()) if callable(fn) else False


def report_records(reporter: Reporter | None, trial: str, iteration: int, records: Any) -> None:
    """Hand ``records`` to the reporter's optional ``report_records`` (nothing if it has none)."""
    fn = getattr(reporter, "report_records", None)
    if callable(fn) and records is not None:
        fn(trial, iteration, records)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


class JsonlReporter:
    """Appends one JSON object per report to ``path`` (NaN written as null).

    ``resume_at``: drop records after this iteration first (they came from a run that
    crashed after its last checkpoint; the resumed run writes them again).
    """

    def __init__(self, path: str | Path, resume_at: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_at is None:
            self.path.write_text("")
        elif self.path.is_file():
            kept = [r for r in read_metrics(self.path) if int(r.get("iter", 0)) <= resume_at]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def report(self, metrics: dict[str, float], checkpoint: Path | None = None) -> None:
        record = {k: _jsonable(v) for k, v in metrics.items()}
        if checkpoint is not None:
            record["checkpoint"] = str(checkpoint)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def report_records(self, trial: str, iteration: int, records: Any) -> None:
        """The final evaluation's per-image records, next to the metrics:
        ``records/eval-<iter>.parquet`` (the results store's layout)."""
        from raybench.results.store import write_eval_records

        write_eval_records(self.path.parent, trial, iteration, records)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (null -> NaN)."""
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            out.append({k: (math.nan if v is None else v) for k, v in json.loads(line).items()})
    return out


class LogReporter:
    """Logs validation metrics and checkpoint folders (INFO, ``logging``): the console's view
    of the reports. Training progress is logged by the loop itself (:mod:`raybench.engine.progress`)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def report(self, metrics: dict[str, float], checkpoint: Path | None = None) -> None:
        val = {k: v for k, v in metrics.items() if k.startswith("val/") and "AP-" not in k}
        if val:
            text = "  ".join(f"{k}={v:.2f}" for k, v in sorted(val.items()))
            log.info("%siter %d: %s", self.prefix, int(metrics.get("iter", 0)), text)
        if checkpoint is not None:
            log.info("%scheckpoint %s", self.prefix, checkpoint)


class MultiReporter:
    """Fan-out to several reporters; stops when any of them says so."""

    def __init__(self, reporters: Sequence[Reporter]) -> None:
        self.reporters = list(reporters)

    def report(self, metrics: dict[str, float], checkpoint: Path | None = None) -> None:
        for r in self.reporters:
            r.report(metrics, checkpoint)

    def report_records(self, trial: str, iteration: int, records: Any) -> None:
        for r in self.reporters:
            report_records(r, trial, iteration, records)

    def should_stop(self) -> bool:
        return any(should_stop(r) for r in self.reporters)
