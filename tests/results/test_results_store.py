"""The Parquet results store: round-trip, resume dedupe, crash safety, status, S3 (moto)."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raybench.results.store import (
    COLUMNS,
    SCHEMA,
    ResultsWriter,
    read_results,
    read_status,
    read_status_of,
    write_status,
)

AXES = {
    "trial": "gdxray-convnext_t-dinov3-frozen-s42",
    "study": "smoke",
    "dataset": "gdxray",
    "task": "detection",
    "decoder": "faster_rcnn",
    "backbone": "convnext_t",
    "timm_name": "convnext_tiny.dinov3_lvd1689m",
    "pretraining": "dinov3",
    "regime": "frozen",
    "seed": 42,
}
RES = {"workers": 2, "gpus_per_worker": 1.0, "cpus_per_worker": 4.0}


def parts(trial_dir: Path) -> list[str]:
    return sorted(p.name for p in (trial_dir / "results").iterdir())


def test_append_flush_read_round_trip(tmp_path):
    trial_dir = tmp_path / "exp" / "trials" / AXES["trial"]
    w = ResultsWriter(trial_dir, AXES | {"metric_name": "val/box_AP50"}, RES)
    assert w.flush() is None  # nothing buffered, nothing written
    w.append(2, 0.5, {"iter": 2, "epoch": 0.5, "train/loss": 1.5, "lr": 1e-3, "note": "text"}, 10.0)
    w.append(4, 1.0, {"train/loss": 1.25, "val/box_AP50": 12.5, "imgs_per_s": 30}, 20.0)
    path = w.flush()
    assert path is not None and path.endswith("results/part-000000004-0.parquet")
    assert pq.read_schema(path).equals(SCHEMA)  # the documented schema, column for column

    df = read_results(tmp_path / "exp")
    assert tuple(df.columns) == COLUMNS
    assert len(df) == 5  # iter/epoch are columns, not metrics; the string value is skipped
    assert set(df["metric"]) == {"train/loss", "lr", "val/box_AP50", "imgs_per_s"}
    row = df[(df["metric"] == "val/box_AP50")].iloc[0]
    assert row["value"] == 12.5 and row["iter"] == 4 and row["epoch"] == 1.0 and row["wall_time"] == 20.0
    assert abs(row["timestamp"] - time.time()) < 60
    assert row["workers"] == 2 and row["gpus_per_worker"] == 1.0 and row["cpus_per_worker"] == 4.0
    for k, v in AXES.items():
        assert (df[k] == v).all(), k
    assert str(df["seed"].dtype) == "int64" and str(df["iter"].dtype) == "int64"
    loss = df[df["metric"] == "train/loss"].sort_values("iter")
    assert loss["value"].tolist() == [1.5, 1.25] and loss["iter"].tolist() == [2, 4]


def test_resume_reappend_does_not_duplicate(tmp_path):
    trial_dir = tmp_path / "trials" / AXES["trial"]
    first = ResultsWriter(trial_dir, AXES, RES)
    first.append(1, 0.1, {"train/loss": 2.0}, 1.0)
    first.flush()
    first.append(2, 0.2, {"train/loss": 1.8, "val/box_AP50": 5.0}, 2.0)
    first.flush()
    # The process dies after iter 2; a restart from the iter-1 checkpoint re-reports iter 2.
    second = ResultsWriter(trial_dir, AXES, RES)
    second.append(2, 0.2, {"train/loss": 1.7, "val/box_AP50": 6.0}, 0.5)
    second.append(3, 0.3, {"train/loss": 1.6}, 1.0)
    second.flush()
    # old parts were never rewritten; numbering continues after the highest existing part
    assert parts(trial_dir) == [
        "part-000000001-0.parquet",
        "part-000000002-1.parquet",
        "part-000000003-2.parquet",
    ]
    df = read_results(tmp_path)
    assert len(df) == 4 and not df.duplicated(["trial", "iter", "metric"]).any()
    at2 = df[df["iter"] == 2].set_index("metric")["value"].to_dict()
    assert at2 == {"train/loss": 1.7, "val/box_AP50": 6.0}  # the latest write wins
    raw = read_results(tmp_path, dedupe_rows=False)
    assert raw["wall_time"].tolist() == [1.0, 2.0, 2.0, 0.5, 0.5, 1.0]  # no dedupe: write order


def test_crash_leaves_no_half_part_and_orphans_are_ignored(tmp_path):
    trial_dir = tmp_path / "trials" / AXES["trial"]
    w = ResultsWriter(trial_dir, AXES, RES)
    w.append(1, 0.1, {"train/loss": 2.0}, 1.0)
    w.flush()
    w.append(2, 0.2, {"train/loss": 1.9}, 2.0)  # never flushed: lost in the "crash"
    results = trial_dir / "results"
    # A writer killed mid-write leaves only its temporary file behind.
    (results / "part-000000002-1.parquet.4242.tmp").write_bytes(b"PAR1 half written")
    (results / ".part-000000003-2.parquet.tmp").write_bytes(b"")
    (results / "notes.txt").write_text("not a part")
    df = read_results(tmp_path)
    assert df["iter"].tolist() == [1] and df["value"].tolist() == [2.0]
    # the next writer does not reuse a name that exists, and never touches the orphans
    w2 = ResultsWriter(trial_dir, AXES, RES)
    w2.append(2, 0.2, {"train/loss": 1.85}, 0.5)
    assert w2.flush().endswith("part-000000002-1.parquet")
    assert (results / "part-000000002-1.parquet.4242.tmp").exists()
    assert read_results(tmp_path)["value"].tolist() == [2.0, 1.85]


def test_min_interval_batches_train_points_but_not_evaluations(tmp_path):
    trial_dir = tmp_path / "t"
    w = ResultsWriter(trial_dir, AXES, RES, min_interval_s=3600)
    w.append(1, 0.0, {"train/loss": 1.0}, 1.0)
    assert w.flush() is not None  # first write is never held back
    w.append(2, 0.0, {"train/loss": 0.9}, 2.0)
    assert w.flush() is None  # too soon: buffered
    w.append(3, 0.0, {"val/box_AP50": 1.0}, 3.0)
    assert w.flush() is not None  # an evaluation is always written at once
    w.append(4, 0.0, {"train/loss": 0.8}, 4.0)
    w.close()
    assert read_results(trial_dir)["iter"].tolist() == [1, 2, 4, 3]  # sorted by metric, then iter


def test_status_is_found_at_any_depth(tmp_path):
    a = tmp_path / "exp" / "trials" / "a-convnext_t-dinov3-full-s42"
    b = tmp_path / "exp" / "tune" / "deep" / "er" / "b-convnext_t-dinov3-full-s42"
    first = write_status(a, "running", extra={"metric": "val/mIoU"})
    time.sleep(0.01)
    write_status(a, "failed", "RuntimeError: boom", extra={"metric": "val/mIoU"})
    time.sleep(0.01)
    write_status(a, "running", extra={"metric": "val/mIoU"})
    write_status(b, "finished", extra={"metric": "val/box_AP50", "final": {"val/box_AP50": 7.5}})
    (tmp_path / "exp" / "other").mkdir()
    (tmp_path / "exp" / "other" / "status.json").write_text('{"ok": true}')  # not ours
    st = read_status(tmp_path / "exp")
    assert set(st) == {a.name, b.name}
    assert st[a.name]["state"] == "running" and st[a.name]["attempts"] == 2
    assert st[a.name]["started"] == first["started"] and st[a.name]["updated"] > first["updated"]
    assert st[a.name]["message"] == ""
    assert st[b.name]["final"] == {"val/box_AP50": 7.5} and st[b.name]["metric"] == "val/box_AP50"
    assert read_status_of(b)["state"] == "finished"
    assert read_status_of(tmp_path / "nowhere") is None
    assert read_status(tmp_path / "nowhere") == {} and read_results(tmp_path / "nowhere").empty
    assert not list(a.glob("*.tmp"))
    with pytest.raises(ValueError, match="state must be one of"):
        write_status(a, "done")  # type: ignore[arg-type]


# ---- S3 (moto on loopback; fixtures in conftest.py) ---------------------------------


def test_s3_round_trip(s3_bucket, tmp_path):
    root = f"s3://{s3_bucket}/runs/smoke"
    trial_dir = f"{root}/trials/{AXES['trial']}"
    write_status(trial_dir, "running", extra={"metric": "val/box_AP50"})
    w = ResultsWriter(trial_dir, AXES, RES)
    w.append(3, 0.5, {"train/loss": 1.0, "val/box_AP50": 4.0}, 5.0)
    w.flush()
    w2 = ResultsWriter(trial_dir, AXES, RES)  # a resumed writer on S3 continues the numbering
    w2.append(3, 0.5, {"val/box_AP50": 4.5}, 1.0)
    assert w2.flush() == f"{s3_bucket}/runs/smoke/trials/{AXES['trial']}/results/part-000000003-1.parquet"
    write_status(trial_dir, "finished", extra={"metric": "val/box_AP50", "final": {"val/box_AP50": 4.5}})

    df = read_results(root)
    assert df.set_index("metric")["value"].to_dict() == {"train/loss": 1.0, "val/box_AP50": 4.5}
    st = read_status(root)
    assert st[AXES["trial"]]["state"] == "finished" and st[AXES["trial"]]["attempts"] == 1
    assert read_status_of(trial_dir)["final"] == {"val/box_AP50": 4.5}

    from raybench.results.report import build_report

    res = build_report(root, tmp_path / "report", wandb=False)
    cell = res.table2[(res.table2["dataset"] == "gdxray") & (res.table2["pretraining"] == "dinov3")]
    assert cell["ours"].tolist() == [4.5] and cell["paper"].tolist() == [7.88]


# --- per-image evaluation records -------------------------------------------------------------


def _records_example():
    import numpy as np

    from raybench.evaluation.records import DetectionRecords, EvalRecords, SemSegRecords

    rng = np.random.default_rng(0)
    inter = rng.integers(0, 50, (5, 3))
    sem = SemSegRecords(
        np.array([0, 1, 2, 3, 7]), inter, inter + rng.integers(0, 9, (5, 3)), inter + 3, ("bg", "a", "b")
    )
    box = DetectionRecords(
        kind="bbox",
        images=np.array([4, 9, 12]),
        categories=np.array([1, 3]),
        n_gt=np.array([[1, 0], [2, 1], [0, 0]]),
        det_image=np.array([0, 1, 1, 2]),
        det_category=np.array([0, 0, 1, 1]),
        det_score=np.array([0.9, 0.8, 0.7, 0.3]),
        det_tp=np.array([1023, 7, 0, 0], np.int32),
        det_fp=np.array([0, 1016, 1023, 1023], np.int32),
        category_names=("crack", "pore"),
        prefix="val/box_",
    )
    return EvalRecords([sem, box])


def test_eval_records_round_trip_through_parquet(tmp_path):
    import numpy as np

    from raybench.results.store import read_eval_records, write_eval_records

    records = _records_example()
    d = tmp_path / "exp" / "trials" / "t1"
    path = write_eval_records(d, "t1", 8, records)
    assert path.endswith("/records/eval-000000008.parquet")
    got = read_eval_records(tmp_path / "exp")
    assert list(got) == ["t1"] and list(got["t1"]) == [8]
    stored = got["t1"][8]
    assert stored.trial == "t1" and stored.iteration == 8
    sem, box = stored.records.parts
    want_sem, want_box = records.parts
    for name in ("images", "inter", "union", "gt"):
        np.testing.assert_array_equal(getattr(sem, name), getattr(want_sem, name))
    assert sem.class_names == ("bg", "a", "b") and sem.background_index == 0
    for name in (
        "images",
        "categories",
        "n_gt",
        "det_image",
        "det_category",
        "det_score",
        "det_tp",
        "det_fp",
    ):
        np.testing.assert_array_equal(getattr(box, name), getattr(want_box, name))
    assert box.category_names == ("crack", "pore") and box.kind == "bbox" and box.iou_thresholds[0] == 0.5
    w = np.array([[1, 1, 1], [3, 0, 0], [0, 2, 1]])
    np.testing.assert_array_equal(box.compute("val/box_AP", w), want_box.compute("val/box_AP", w))
    assert stored.records.by_metric("val/mIoU_nobg") is sem


def test_eval_records_of_a_newer_schema_are_skipped_with_a_warning(tmp_path):
    import json

    import pyarrow as pa

    from raybench.results.store import RECORDS_META_KEY, read_eval_records, records_table

    table = records_table(_records_example(), "t2", 4)
    header = json.loads(table.schema.metadata[RECORDS_META_KEY])
    header["schema_version"] = 99
    newer = table.replace_schema_metadata({RECORDS_META_KEY: json.dumps(header).encode()})
    out = tmp_path / "trials" / "t2" / "records"
    out.mkdir(parents=True)
    pq.write_table(newer, out / "eval-000000004.parquet")
    pq.write_table(pa.table({"x": [1]}), out / "eval-000000005.parquet")  # no header at all
    with pytest.warns(UserWarning) as caught:
        assert read_eval_records(tmp_path) == {}
    text = " ".join(str(w.message) for w in caught)
    assert "schema version 99" in text and "eval-000000004.parquet" in text
    assert "no raybench records header" in text and "eval-000000005.parquet" in text
