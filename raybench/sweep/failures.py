"""Failure classification: which failures a retry would only repeat, and one readable line
for the ones Ray reports as a whole traceback.

A non-finite loss is *deterministic* (a retry from the last checkpoint computes the same
NaN): the worker records it in status.json (``failure.kind = "deterministic"``) and the
trial's driver fails the Tune trial without a retry. Everything else (a killed worker, a
lost node) is worth Ray's retries.
"""

from __future__ import annotations

import re
from typing import Any

#: ``failure.kind`` in status.json of a failure that a retry would only repeat.
DETERMINISTIC = "deterministic"


class TrialFailed(RuntimeError):
    """The trial failed in a way no retry can fix (a non-finite loss): its message is the
    worker's own (``NonFiniteLossError: non-finite loss at iteration k: <term> = nan ...``)."""


def deterministic_failure(status: dict[str, Any] | None) -> bool:
    """Whether status.json records a failure a retry would only repeat (a non-finite loss)."""
    if not status or status.get("state") != "failed":
        return False
    failure = status.get("failure")
    return isinstance(failure, dict) and failure.get("kind") == DETERMINISTIC


def deterministic_failure_record(exc: Any) -> dict[str, Any]:
    """status.json's ``failure`` for a ``NonFiniteLossError``."""
    return {"kind": DETERMINISTIC, "type": type(exc).__name__, "iteration": exc.iteration, "term": exc.term}


def worker_reported(status: dict[str, Any] | None, exc: BaseException, since: float) -> bool:
    """Whether a worker wrote this failure's message into status.json during this fit."""
    if not status or status.get("state") != "failed" or not status.get("message"):
        return False
    if float(status.get("updated", 0)) < since:
        return False
    failures = getattr(exc, "worker_failures", None) or {}
    return not failures or any(type(e).__name__ in str(status["message"]) for e in failures.values())


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Fault)\b.*")


def failure_message(exc: BaseException, limit: int = 2000) -> str:
    """One readable line for a failed Train run: the worker's own exception (lowest failing
    rank) rather than the whole traceback Train V2 wraps it in; else the last exception
    line of the text (a traceback ends with it)."""
    where = ""
    failures = getattr(exc, "worker_failures", None)
    if failures:
        rank = min(failures)
        err: BaseException = failures[rank]
        where = f"worker {rank}" + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "") + ": "
    else:
        err = getattr(exc, "controller_failure", None) or exc
    text = str(err).strip()
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1:
        found = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
        line = found[-1] if found else lines[0]
    else:
        line = lines[0] if lines else ""
    kind = type(err).__name__
    head = line if line.startswith(kind) or _EXCEPTION_LINE.match(line) else f"{kind}: {line}"
    outer = "" if err is exc else f"{type(exc).__name__}: "
    return f"{outer}{where}{head}"[:limit]


__all__ = [
    "DETERMINISTIC",
    "TrialFailed",
    "deterministic_failure",
    "deterministic_failure_record",
    "failure_message",
    "worker_reported",
]
