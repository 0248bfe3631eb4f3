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
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raybench.evaluation.records import SCHEMA_VERSION as RECORDS_SCHEMA_VERSION
from raybench.evaluation.records import DetectionRecords, EvalRecords, Records, SemSegRecords
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
STATUS_FILE = "status.json"
STATUS_SCHEMA = "raybench.status/1"
PART_RE = re.compile(r"^part-(\d{9,})-(\d+)\.parquet$")
# Keys of the metrics dict that are columns already, not metrics.
_NOT_METRICS = frozenset({"iter", "epoch"})

State = Literal["running", "finished", "failed"]
STATES: tuple[str, ...] = ("running", "finished", "failed")


# ---------------------------------------------------------------------------------------
# file systems


def _is_local(fs: pafs.FileSystem) -> bool:
    return fs.type_name == "local"


def _write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the whole file or nothing.

    Local: temporary file in the same folder, fsync, rename. Object stores: one PUT
    (an object appears only once its upload completes; a rename there is a copy).
    """
    parent = path.rsplit("/", 1)[0]
    if _is_local(fs):
        os.makedirs(parent, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return
    fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(data)


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes | None:
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except (FileNotFoundError, OSError):
        return None


def _list_files(fs: pafs.FileSystem, path: str) -> list[str]:
    """Every file below ``path`` (any depth); empty if ``path`` does not exist."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [path]
    if info.type != pafs.FileType.Directory:
        return []
    sel = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    return [i.path for i in fs.get_file_info(sel) if i.type == pafs.FileType.File]


# ---------------------------------------------------------------------------------------
# writing


def _as_float(value: Any) -> float | None:
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
            value = _as_float(raw)
            if value is None:
                continue
            self._rows.append((int(iteration), float(epoch), str(name), value, float(wall_time), now))

    def _first_free_n(self) -> int:
        names = [p.rsplit("/", 1)[-1] for p in _list_files(self._fs, f"{self._dir}/{RESULTS_DIR}")]
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
        _write_bytes(self._fs, path, buf.getvalue())
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


# ---------------------------------------------------------------------------------------
# status


def read_status_of(trial_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``status.json`` of one trial folder, or None if it has none (or it is unreadable)."""
    fs, path = resolve(trial_dir)
    data = _read_bytes(fs, f"{path}/{STATUS_FILE}")
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
    _write_bytes(fs, f"{path}/{STATUS_FILE}", data)
    return status


def _json_default(obj: Any) -> Any:
    value = _as_float(obj)
    if value is not None:
        return value
    return str(obj)


def _find(root: str | os.PathLike[str]) -> tuple[pafs.FileSystem, list[str], list[str]]:
    """(fs, part files, status files) below ``root``; ``*.tmp`` and other files are ignored."""
    fs, path = resolve(root)
    parts, statuses = [], []
    for f in _list_files(fs, path):
        head, _, name = f.rpartition("/")
        if name == STATUS_FILE:
            statuses.append(f)
        elif PART_RE.match(name) and head.rsplit("/", 1)[-1] == RESULTS_DIR:
            parts.append(f)
    return fs, parts, statuses


def read_status(root: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Every trial's status below an experiment folder (any depth), keyed by trial name."""
    fs, _, files = _find(root)
    files.sort()
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(files)))) as pool:
        blobs = list(pool.map(lambda f: _read_bytes(fs, f), files))
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


# ---------------------------------------------------------------------------------------
# reading


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
    fs, parts, _ = _find(root)
    if not parts:
        return empty_results()
    parts.sort(key=_part_key)

    def load(path: str) -> pa.Table | None:
        try:
            with fs.open_input_file(path) as f:
                return pq.read_table(f, schema=SCHEMA)
        except (OSError, pa.ArrowException) as exc:
            import warnings

            warnings.warn(f"raybench results: skipping unreadable part {path}: {exc}", stacklevel=2)
            return None

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(parts)))) as pool:
        tables = [t for t in pool.map(load, parts) if t is not None]
    if not tables:
        return empty_results()
    df = pa.concat_tables(tables).to_pandas()
    if dedupe_rows:
        df = dedupe(df)
    else:
        df = df.reset_index(drop=True)
    return df


# ---------------------------------------------------------------------------------------
# per-image evaluation records (bootstrap intervals)

#: ``<trial_dir>/records/eval-<iter:09d>.parquet``: the final evaluation's per-image records.
RECORDS_DIR = "records"
RECORDS_RE = re.compile(r"^eval-(\d{9,})\.parquet$")
#: Parquet key-value metadata key holding the JSON header (schema version, trial, parts).
RECORDS_META_KEY = b"raybench.records"
#: One row per (image, class) of a part (``entry`` 0) or per detection (``entry`` 1); ``part``
#: indexes the header's ``parts``. Unused columns are null (and cost nothing compressed).
RECORDS_SCHEMA = pa.schema(
    [
        ("part", pa.int16()),
        ("entry", pa.int8()),
        ("image", pa.int64()),
        ("category", pa.int64()),
        ("gt", pa.int64()),
        ("inter", pa.int64()),
        ("union", pa.int64()),
        ("score", pa.float64()),
        ("tp", pa.int32()),
        ("fp", pa.int32()),
    ]
)


@dataclass(frozen=True)
class StoredRecords:
    """One trial's stored per-image records: the evaluation at ``iteration``."""

    trial: str
    iteration: int
    records: EvalRecords
    path: str


def records_table(records: EvalRecords, trial: str, iteration: int) -> pa.Table:
    """The Parquet table of ``records`` (header in the schema's metadata)."""
    cols: dict[str, list[np.ndarray]] = {name: [] for name in RECORDS_SCHEMA.names}
    parts: list[dict[str, Any]] = []

    def add(part: int, entry: int, n: int, **values: np.ndarray) -> None:
        for name in RECORDS_SCHEMA.names:
            if name == "part":
                cols[name].append(np.full(n, part, np.int16))
            elif name == "entry":
                cols[name].append(np.full(n, entry, np.int8))
            else:
                cols[name].append(values.get(name, np.full(n, None, object)))

    for p, rec in enumerate(records.parts):
        if isinstance(rec, SemSegRecords):
            n, c = rec.inter.shape
            parts.append(
                {
                    "kind": rec.kind,
                    "prefix": rec.prefix,
                    "class_names": list(rec.class_names),
                    "background_index": rec.background_index,
                }
            )
            add(
                p,
                0,
                n * c,
                image=np.repeat(rec.images, c),
                category=np.tile(np.arange(c, dtype=np.int64), n),
                gt=rec.gt.reshape(-1),
                inter=rec.inter.reshape(-1),
                union=rec.union.reshape(-1),
            )
        else:
            n, k = rec.n_gt.shape
            parts.append(
                {
                    "kind": rec.kind,
                    "prefix": rec.prefix,
                    "categories": [int(c) for c in rec.categories],
                    "category_names": list(rec.category_names),
                    "iou_thresholds": list(rec.iou_thresholds),
                }
            )
            add(
                p,
                0,
                n * k,
                image=np.repeat(rec.images, k),
                category=np.tile(rec.categories, n),
                gt=rec.n_gt.reshape(-1),
            )
            add(
                p,
                1,
                len(rec.det_score),
                image=rec.images[rec.det_image],
                category=rec.categories[rec.det_category],
                score=rec.det_score,
                tp=rec.det_tp,
                fp=rec.det_fp,
            )
    arrays = [
        pa.array(np.concatenate(cols[f.name]) if cols[f.name] else [], type=f.type, from_pandas=True)
        for f in RECORDS_SCHEMA
    ]
    header = {
        "schema_version": RECORDS_SCHEMA_VERSION,
        "trial": trial,
        "iter": int(iteration),
        "parts": parts,
    }
    schema = RECORDS_SCHEMA.with_metadata({RECORDS_META_KEY: json.dumps(header).encode()})
    return pa.Table.from_arrays(arrays, schema=schema)


def records_from_table(table: pa.Table, where: str = "records") -> tuple[dict[str, Any], EvalRecords]:
    """(header, records) of a table written by :func:`records_table`.

    Raises ``ValueError`` naming ``where`` for a file without a header or from a newer
    schema version (a reader never guesses at fields it does not know)."""
    raw = (table.schema.metadata or {}).get(RECORDS_META_KEY)
    if raw is None:
        raise ValueError(f"{where}: no raybench records header (metadata key {RECORDS_META_KEY.decode()!r})")
    header = json.loads(raw)
    version = int(header.get("schema_version", 0))
    if not 1 <= version <= RECORDS_SCHEMA_VERSION:
        raise ValueError(
            f"{where}: records schema version {version}, this raybench reads 1..{RECORDS_SCHEMA_VERSION} "
            "(written by a newer raybench? upgrade to read it)"
        )
    missing = [n for n in RECORDS_SCHEMA.names if n not in table.column_names]
    if missing:
        raise ValueError(f"{where}: records lack column(s) {missing}")
    df = {n: table.column(n).to_numpy(zero_copy_only=False) for n in RECORDS_SCHEMA.names}
    parts: list[Records] = []
    for p, meta in enumerate(header["parts"]):
        sel = df["part"] == p
        rows = sel & (df["entry"] == 0)
        image, category = df["image"][rows].astype(np.int64), df["category"][rows].astype(np.int64)
        images = np.unique(image)
        i = np.searchsorted(images, image)
        if meta["kind"] == SemSegRecords.kind:
            c = len(meta["class_names"])
            grids = {}
            for name in ("inter", "union", "gt"):
                grid = np.zeros((len(images), c), np.int64)
                grid[i, category] = df[name][rows].astype(np.int64)
                grids[name] = grid
            parts.append(
                SemSegRecords(
                    images,
                    grids["inter"],
                    grids["union"],
                    grids["gt"],
                    tuple(meta["class_names"]),
                    meta.get("background_index"),
                    meta.get("prefix", "val/"),
                )
            )
            continue
        cats = np.asarray(meta["categories"], np.int64)
        cat_index = {int(c): n for n, c in enumerate(cats)}
        n_gt = np.zeros((len(images), len(cats)), np.int64)
        n_gt[i, [cat_index[int(c)] for c in category]] = df["gt"][rows].astype(np.int64)
        dets = sel & (df["entry"] == 1)
        parts.append(
            DetectionRecords(
                kind=meta["kind"],
                images=images,
                categories=cats,
                n_gt=n_gt,
                det_image=np.searchsorted(images, df["image"][dets].astype(np.int64)),
                det_category=np.array([cat_index[int(c)] for c in df["category"][dets]], np.int64),
                det_score=df["score"][dets].astype(np.float64),
                det_tp=df["tp"][dets].astype(np.int32),
                det_fp=df["fp"][dets].astype(np.int32),
                category_names=tuple(meta.get("category_names", ())),
                iou_thresholds=tuple(float(t) for t in meta["iou_thresholds"]),
                prefix=meta.get("prefix", "val/box_"),
            )
        )
    return header, EvalRecords(parts)


def write_eval_records(
    trial_dir: str | os.PathLike[str], trial: str, iteration: int, records: EvalRecords
) -> str:
    """Write one evaluation's records to ``<trial_dir>/records/eval-<iter>.parquet`` (atomically;
    the same iteration written again replaces it). Returns the path."""
    fs, path = resolve(trial_dir)
    buf = io.BytesIO()
    pq.write_table(records_table(records, trial, iteration), buf, compression="zstd")
    target = f"{path}/{RECORDS_DIR}/eval-{int(iteration):09d}.parquet"
    _write_bytes(fs, target, buf.getvalue())
    return target


def read_eval_records(root: str | os.PathLike[str], threads: int = 8) -> dict[str, dict[int, StoredRecords]]:
    """Every trial's stored records below ``root`` (any depth): ``{trial: {iteration: ...}}``.

    Unreadable files and files of a newer schema are skipped with a warning naming them."""
    fs, path = resolve(root)
    files = []
    for f in _list_files(fs, path):
        head, _, name = f.rpartition("/")
        if RECORDS_RE.match(name) and head.rsplit("/", 1)[-1] == RECORDS_DIR:
            files.append(f)
    files.sort()

    def load(f: str) -> StoredRecords | None:
        import warnings

        try:
            with fs.open_input_file(f) as fh:
                table = pq.read_table(fh)
            header, records = records_from_table(table, f)
        except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
            warnings.warn(f"raybench records: skipping {f}: {exc}", stacklevel=2)
            return None
        return StoredRecords(str(header["trial"]), int(header["iter"]), records, f)

    out: dict[str, dict[int, StoredRecords]] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(files)))) as pool:
        for rec in pool.map(load, files):
            if rec is not None:
                out.setdefault(rec.trial, {})[rec.iteration] = rec
    return out


def finite(value: Any) -> bool:
    """True for a real, finite number."""
    v = _as_float(value)
    return v is not None and math.isfinite(v)


__all__ = [
    "AXES_COLUMNS",
    "COLUMNS",
    "RECORDS_SCHEMA",
    "RESOURCE_COLUMNS",
    "SCHEMA",
    "ResultsWriter",
    "StoredRecords",
    "dedupe",
    "empty_results",
    "read_eval_records",
    "read_results",
    "read_status",
    "read_status_of",
    "resolve",
    "write_eval_records",
    "write_status",
]
