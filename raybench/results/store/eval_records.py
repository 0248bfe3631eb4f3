"""Per-image evaluation records in the store: ``<trial_dir>/records/eval-<iter:09d>.parquet``,
the final evaluation's records (:mod:`raybench.evaluation.records`) from which the report's
bootstrap intervals recompute a metric on any resample of the validation images.

Layout: one long table (a row per (image, class), or per (image, category) and per
detection; unused columns null), with a JSON header in the Parquet metadata that carries the
schema version; docs/report.md, *Per-image evaluation records*, lists the columns.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raybench.evaluation.records import SCHEMA_VERSION as RECORDS_SCHEMA_VERSION
from raybench.evaluation.records import DetectionRecords, EvalRecords, Records, SemSegRecords
from raybench.results.store.files import find_files, map_files, write_bytes
from raybench.storage import resolve

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
    parts = [_part_from_rows(df, p, meta) for p, meta in enumerate(header["parts"])]
    return header, EvalRecords(parts)


def _part_from_rows(df: dict[str, np.ndarray], p: int, meta: dict[str, Any]) -> Records:
    """Part ``p`` of the table's columns ``df``, as the records class its ``kind`` names."""
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
        return SemSegRecords(
            images,
            grids["inter"],
            grids["union"],
            grids["gt"],
            tuple(meta["class_names"]),
            meta.get("background_index"),
            meta.get("prefix", "val/"),
        )
    cats = np.asarray(meta["categories"], np.int64)
    cat_index = {int(c): n for n, c in enumerate(cats)}
    n_gt = np.zeros((len(images), len(cats)), np.int64)
    n_gt[i, [cat_index[int(c)] for c in category]] = df["gt"][rows].astype(np.int64)
    dets = sel & (df["entry"] == 1)
    return DetectionRecords(
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


def write_eval_records(
    trial_dir: str | os.PathLike[str], trial: str, iteration: int, records: EvalRecords
) -> str:
    """Write one evaluation's records to ``<trial_dir>/records/eval-<iter>.parquet`` (atomically;
    the same iteration written again replaces it). Returns the path."""
    fs, path = resolve(trial_dir)
    buf = io.BytesIO()
    pq.write_table(records_table(records, trial, iteration), buf, compression="zstd")
    target = f"{path}/{RECORDS_DIR}/eval-{int(iteration):09d}.parquet"
    write_bytes(fs, target, buf.getvalue())
    return target


def read_eval_records(root: str | os.PathLike[str], threads: int = 8) -> dict[str, dict[int, StoredRecords]]:
    """Every trial's stored records below ``root`` (any depth): ``{trial: {iteration: ...}}``.

    Unreadable files and files of a newer schema are skipped with a warning naming them."""
    fs, files = find_files(root, RECORDS_RE, RECORDS_DIR)
    files.sort()

    def load(f: str) -> StoredRecords | None:
        try:
            with fs.open_input_file(f) as fh:
                table = pq.read_table(fh)
            header, records = records_from_table(table, f)
        except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
            warnings.warn(f"raybench records: skipping {f}: {exc}", stacklevel=2)
            return None
        return StoredRecords(str(header["trial"]), int(header["iter"]), records, f)

    out: dict[str, dict[int, StoredRecords]] = {}
    for rec in map_files(load, files, threads):
        if rec is not None:
            out.setdefault(rec.trial, {})[rec.iteration] = rec
    return out


__all__ = [
    "RECORDS_DIR",
    "RECORDS_META_KEY",
    "RECORDS_SCHEMA",
    "StoredRecords",
    "read_eval_records",
    "records_from_table",
    "records_table",
    "write_eval_records",
]
