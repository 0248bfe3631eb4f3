"""The metric rows of the results store: ``<trial_dir>/results/part-<iter:09d>-<n>.parquet``,
written by :class:`ResultsWriter` and read back by :func:`read_results` (the layout and why:
the package docstring, :mod:`raybench.results.store`)."""

from __future__ import annotations

import io
import os
import re
import time
import warnings
from collections.abc import Mapping
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from raybench.results.store.files import find_files, list_files, map_files, write_bytes
from raybench.storage import resolve

#: Grid coordinates of a trial (``TrialSpec.axes()``), repeated on every row.
AXES_COLUMNS: tuple[str, ...] = (
    "trial",
    "study",
    "dataset",
    "task",
    "decoder",
    "backbone",
    "timm_name",
    "pretraining",
    "regime",
    "seed",
)
#: Resources of the trial (for GPU-hours), repeated on every row.
RESOURCE_COLUMNS: tuple[str, ...] = ("workers", "gpus_per_worker", "cpus_per_worker")

SCHEMA = pa.schema(
    [(c, pa.int64() if c == "seed" else pa.string()) for c in AXES_COLUMNS]
    + [
        ("iter", pa.int64()),
        ("epoch", pa.float64()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("wall_time", pa.float64()),
        ("timestamp", pa.float64()),
        ("workers", pa.int64()),
        ("gpus_per_worker", pa.float64()),
        ("cpus_per_worker", pa.float64()),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)

RESULTS_DIR = "results"
PART_RE = re.compile(r"^part-(\d{9,})-(\d+)\.parquet$")
# Keys of the metrics dict that are columns already, not metrics.
_NOT_METRICS = frozenset({"iter", "epoch"})


def as_float(value: Any) -> float | None:
    """A Python / numpy / torch number as a float; None for anything else."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            v = item()
        except (ValueError, RuntimeError):
            return None
        return float(v) if isinstance(v, (int, float, bool)) else None
    return None


class ResultsWriter:
    """Buffers a trial's metrics and appends them to its Parquet parts on :meth:`flush`.

    ``axes`` are the trial's grid coordinates (``TrialSpec.axes()``; extra keys are
    ignored), ``resources`` its ``workers`` / ``gpus_per_worker`` / ``cpus_per_worker``.
    ``min_interval_s`` > 0 makes :meth:`flush` write at most that often (a buffer holding
    a ``val/`` metric is always written) to keep the number of parts small on long runs;
    :meth:`close` always writes.
    """

    def __init__(
        self,
        trial_dir: str | os.PathLike[str],
        axes: Mapping[str, Any],
        resources: Mapping[str, Any],
        *,
        min_interval_s: float = 0.0,
    ):
        missing = [c for c in AXES_COLUMNS if c not in axes]
        if missing:
            raise ValueError(f"ResultsWriter: axes lack {missing} (pass TrialSpec.axes())")
        self.trial_dir = str(trial_dir)
        self.axes = {c: axes[c] for c in AXES_COLUMNS}
        self.resources = {
            "workers": int(resources.get("workers", 1)),
            "gpus_per_worker": float(resources.get("gpus_per_worker", 0.0)),
            "cpus_per_worker": float(resources.get("cpus_per_worker", 0.0)),
        }
        self.min_interval_s = float(min_interval_s)
        self._fs, self._dir = resolve(self.trial_dir)
        self._rows: list[tuple[int, float, str, float, float, float]] = []
        self._next_n: int | None = None
        self._last_write = 0.0
        self.parts_written: list[str] = []

    def append(self, iteration: int, epoch: float, metrics: Mapping[str, Any], wall_time: float) -> None:
        """Buffer one log / evaluation point (non-numeric values are skipped)."""
        now = time.time()
        for name, raw in metrics.items():
            if name in _NOT_METRICS:
                continue
            value = as_float(raw)
            if value is None:
                continue
            self._rows.append((int(iteration), float(epoch), str(name), value, float(wall_time), now))

    def _first_free_n(self) -> int:
        names = [p.rsplit("/", 1)[-1] for p in list_files(self._fs, f"{self._dir}/{RESULTS_DIR}")]
        ns = [int(m.group(2)) for m in map(PART_RE.match, names) if m]
        return max(ns, default=-1) + 1

    def flush(self, force: bool = False) -> str | None:
        """Write the buffered rows as one new part; returns its path (None if nothing written)."""
        if not self._rows:
            return None
        if not force and self.min_interval_s > 0:
            has_val = any(r[2].startswith("val/") for r in self._rows)
            if not has_val and time.time() - self._last_write < self.min_interval_s:
                return None
        if self._next_n is None:
            self._next_n = self._first_free_n()
        rows = self._rows
        n = len(rows)
        cols: dict[str, list[Any]] = {c: [v] * n for c, v in self.axes.items()}
        cols["seed"] = [int(self.axes["seed"])] * n
        cols["iter"] = [r[0] for r in rows]
        cols["epoch"] = [r[1] for r in rows]
        cols["metric"] = [r[2] for r in rows]
        cols["value"] = [r[3] for r in rows]
        cols["wall_time"] = [r[4] for r in rows]
        cols["timestamp"] = [r[5] for r in rows]
        for c, v in self.resources.items():
            cols[c] = [v] * n
        for c in AXES_COLUMNS:
            if c != "seed":
                cols[c] = [str(v) for v in cols[c]]
        table = pa.table(cols, schema=SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        name = f"part-{max(r[0] for r in rows):09d}-{self._next_n}.parquet"
        path = f"{self._dir}/{RESULTS_DIR}/{name}"
        write_bytes(self._fs, path, buf.getvalue())
        self._next_n += 1
        self._rows = []
        self._last_write = time.time()
        self.parts_written.append(path)
        return path

    def close(self) -> None:
        """Write whatever is buffered, whatever ``min_interval_s`` says."""
        self.flush(force=True)

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def empty_results() -> pd.DataFrame:
    """An empty frame with the store's columns and dtypes."""
    return SCHEMA.empty_table().to_pandas()


def _part_key(path: str) -> tuple[str, int]:
    head, _, name = path.rpartition("/")
    m = PART_RE.match(name)
    return head, int(m.group(2)) if m else -1


def dedupe(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (trial, iter, metric): the one written last.

    Rows must be in write order (as :func:`read_results` returns them with ``dedupe=False``).
    """
    if df.empty:
        return df
    out = df.drop_duplicates(["trial", "iter", "metric"], keep="last")
    return out.sort_values(["trial", "metric", "iter"], kind="stable").reset_index(drop=True)


def read_results(root: str | os.PathLike[str], *, dedupe_rows: bool = True, threads: int = 8) -> pd.DataFrame:
    """Every row of every trial below ``root`` (local folder or ``s3://`` / ``gs://`` URI).

    With ``dedupe_rows`` (default) a re-reported (trial, iter, metric) keeps its latest
    value; without it rows come in write order (per trial, by part sequence number),
    which the cost table uses to count time spent before a crash too.
    Unreadable parts (e.g. a truncated copy) are skipped with a warning.
    """
    fs, parts = find_files(root, PART_RE, RESULTS_DIR)
    if not parts:
        return empty_results()
    parts.sort(key=_part_key)

    def load(path: str) -> pa.Table | None:
        try:
            with fs.open_input_file(path) as f:
                return pq.read_table(f, schema=SCHEMA)
        except (OSError, pa.ArrowException) as exc:
            warnings.warn(f"raybench results: skipping unreadable part {path}: {exc}", stacklevel=2)
            return None

    tables = [t for t in map_files(load, parts, threads) if t is not None]
    if not tables:
        return empty_results()
    df = pa.concat_tables(tables).to_pandas()
    return dedupe(df) if dedupe_rows else df.reset_index(drop=True)


__all__ = [
    "AXES_COLUMNS",
    "COLUMNS",
    "PART_RE",
    "RESOURCE_COLUMNS",
    "RESULTS_DIR",
    "SCHEMA",
    "ResultsWriter",
    "as_float",
    "dedupe",
    "empty_results",
    "read_results",
]
