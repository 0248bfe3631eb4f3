"""``<trial_dir>/status.json``: whether a trial is running, finished or failed, and what the
report needs without the study (e.g. the headline metric)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any, Literal

from raybench.results.store.files import find_files, map_files, read_bytes, write_bytes
from raybench.results.store.parts import as_float
from raybench.storage import resolve

STATUS_FILE = "status.json"
STATUS_SCHEMA = "raybench.status/1"

State = Literal["running", "finished", "failed"]
STATES: tuple[str, ...] = ("running", "finished", "failed")


def read_status_of(trial_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``status.json`` of one trial folder, or None if it has none (or it is unreadable)."""
    fs, path = resolve(trial_dir)
    data = read_bytes(fs, f"{path}/{STATUS_FILE}")
    if data is None:
        return None
    try:
        status = json.loads(data)
    except ValueError:
        return None
    return status if isinstance(status, dict) else None


def write_status(
    trial_dir: str | os.PathLike[str],
    state: State,
    message: str = "",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Record the trial's state in ``<trial_dir>/status.json`` (atomically).

    ``extra`` keys are merged at the top level (e.g. ``metric`` = the headline metric,
    ``final`` = the last metrics). ``started`` survives rewrites; ``attempts`` counts the
    times the trial entered ``running``.
    """
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {state!r}")
    fs, path = resolve(trial_dir)
    previous = read_status_of(trial_dir) or {}
    now = time.time()
    attempts = int(previous.get("attempts", 0)) + (1 if state == "running" else 0)
    status: dict[str, Any] = {
        "schema": STATUS_SCHEMA,
        "trial": previous.get("trial") or path.rstrip("/").rsplit("/", 1)[-1],
        "state": state,
        "message": message,
        "started": previous.get("started", now),
        "updated": now,
        "attempts": max(attempts, 1),
    }
    status.update(dict(extra or {}))
    data = json.dumps(status, indent=1, sort_keys=True, default=_json_default).encode()
    write_bytes(fs, f"{path}/{STATUS_FILE}", data)
    return status


def _json_default(obj: Any) -> Any:
    value = as_float(obj)
    return value if value is not None else str(obj)


def read_status(root: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Every trial's status below an experiment folder (any depth), keyed by trial name."""
    fs, files = find_files(root, STATUS_FILE)
    files.sort()
    blobs = map_files(lambda f: read_bytes(fs, f), files)
    out: dict[str, dict[str, Any]] = {}
    for f, data in zip(files, blobs):
        try:
            status = json.loads(data) if data is not None else None
        except ValueError:
            continue
        if not isinstance(status, dict) or status.get("state") not in STATES:
            continue  # someone else's status.json
        folder = f.rsplit("/", 2)[-2]
        name = str(status.get("trial") or folder)
        prev = out.get(name)
        if prev is None or float(status.get("updated", 0)) >= float(prev.get("updated", 0)):
            out[name] = status
    return out


__all__ = ["STATES", "STATUS_FILE", "STATUS_SCHEMA", "State", "read_status", "read_status_of", "write_status"]
