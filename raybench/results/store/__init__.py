"""The results store: every logged point of every trial, as small immutable Parquet parts.

Why this shape:

- **Long format** (one row per (trial, iter, metric)): any metric a trial logs lands here
  without a schema change, and the report filters it with plain pandas.
- **Immutable parts** ``<trial_dir>/results/part-<iter:09d>-<n>.parquet``: a part is written
  once (to a temporary name and renamed on a local disk; a single PUT on object stores,
  which is atomic there) and never rewritten, so a crash loses at most the unflushed tail
  and a half-written file is never read (``*.tmp`` names are ignored).
- ``n`` is a per-trial sequence number that keeps growing across restarts (the writer
  continues after the highest ``n`` it finds), so "latest" is well defined: after a resume
  re-reports an iteration, the read-back keeps the row from the highest ``n``
  (dedupe on ``(trial, iter, metric)``).
- Everything goes through ``pyarrow.fs``, so the same code writes and reads a local folder,
  ``s3://`` and ``gs://`` (a Ray Tune experiment on cloud storage).
- ``status.json`` next to ``results/`` says whether the trial is running, finished or
  failed, and carries what the report needs without the study (e.g. the headline metric).

Where each piece lives: :mod:`.parts` (the metric rows: writer, reader, dedupe),
:mod:`.status` (``status.json``), :mod:`.eval_records` (per-image records of the final
evaluation, for bootstrap intervals), :mod:`.files` (atomic writes, listing). Every public
name is importable from ``raybench.results.store``; docs/report.md describes the formats.
"""

from __future__ import annotations

from raybench.results.store.eval_records import (
    RECORDS_DIR,
    RECORDS_META_KEY,
    RECORDS_SCHEMA,
    StoredRecords,
    read_eval_records,
    records_from_table,
    records_table,
    write_eval_records,
)
from raybench.results.store.parts import (
    AXES_COLUMNS,
    COLUMNS,
    PART_RE,
    RESOURCE_COLUMNS,
    RESULTS_DIR,
    SCHEMA,
    ResultsWriter,
    dedupe,
    empty_results,
    read_results,
)
from raybench.results.store.status import (
    STATES,
    STATUS_FILE,
    STATUS_SCHEMA,
    State,
    read_status,
    read_status_of,
    write_status,
)
from raybench.storage import resolve

__all__ = [
    "AXES_COLUMNS",
    "COLUMNS",
    "PART_RE",
    "RECORDS_DIR",
    "RECORDS_META_KEY",
    "RECORDS_SCHEMA",
    "RESOURCE_COLUMNS",
    "RESULTS_DIR",
    "SCHEMA",
    "STATES",
    "STATUS_FILE",
    "STATUS_SCHEMA",
    "ResultsWriter",
    "State",
    "StoredRecords",
    "dedupe",
    "empty_results",
    "read_eval_records",
    "read_results",
    "read_status",
    "read_status_of",
    "records_from_table",
    "records_table",
    "resolve",
    "write_eval_records",
    "write_status",
]
