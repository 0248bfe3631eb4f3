"""How a Ray Train worker reports: the engine's metrics and checkpoints to Ray (and from there
to Tune), W&B and the Parquet store; checkpoints linked into Ray's storage; resume records.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from raybench.results.store import ResultsWriter, read_status_of, write_eval_records, write_status
from raybench.storage import resolve
from raybench.study import TrialSpec
from raybench.sweep.drills import maybe_inject_fault
from raybench.sweep.layout import ExperimentLayout
from raybench.tracking import WandbTracker

CHECKPOINT_META = "raybench.json"
RESUMES_FILE = "resumes.jsonl"
#: Key of the first result Tune gets after a resume: the iteration resumed from (the
#: console's trial event; not a metric, never in the Parquet store or W&B).
RESUMED_KEY = "resumed_from"

log = logging.getLogger(__name__)


class RayReporter:
    """Engine reporter for a Ray Train worker: every rank reports (Train V2 expects all
    ranks to call ``ray.train.report``); rank 0 also logs to W&B and the Parquet store."""

    def __init__(
        self, trial: TrialSpec, layout: ExperimentLayout, rank: int, resumed_from: int | None = None
    ):
        self.trial = trial
        self.layout = layout
        self.rank = rank
        self.resumed_from = resumed_from  # told to Tune with the first report, then None
        self.t0 = time.time()
        self.results = None
        self.tracker = None
        self.tracker_start_s = 0.0
        self.report_s = 0.0  # time spent in report(): W&B, Parquet, Ray report + checkpoint upload
        self.batch: dict[str, Any] | None = None  # the OOM fallback's micro-batch choice, if any
        if rank == 0:
            axes = trial.axes() | {"metric_name": trial.dataset.headline_metric}
            s = trial.scaling
            resources = {
                "workers": s.workers,
                "gpus_per_worker": s.gpus_per_worker if s.use_gpu else 0.0,
                "cpus_per_worker": s.cpus_per_worker,
            }
            self.results = ResultsWriter(
                layout.trial_dir(trial.name), trial.axes(), resources, min_interval_s=30.0
            )
            self.tracker = WandbTracker(
                trial=trial.name,
                experiment=layout.name,
                group=trial.study,
                job_type=trial.dataset.id,
                tags=[trial.backbone.arch, trial.backbone.pretraining, trial.regime],
                config=trial.to_dict() | {"trial_name": trial.name, "axes": axes},
                run_dir=layout.wandb_dir(trial.name),
                fresh_start=layout.fresh_starts(trial.name),
            )
            t = time.time()
            self.tracker.start()
            self.tracker_start_s = time.time() - t

    def report(self, metrics: dict[str, float], checkpoint: Path | None = None) -> None:
        import ray.train

        t = time.time()
        step = int(metrics.get("iter", 0))
        maybe_inject_fault(self.trial.name, step, self.layout)
        if self.rank == 0:
            if self.results is not None:
                self.results.append(step, float(metrics.get("epoch", 0.0)), metrics, time.time() - self.t0)
                self.results.flush(force=checkpoint is not None)  # rows up to a checkpoint are never lost
            if self.tracker is not None:
                self.tracker.log(metrics, step=step)
        ckpt = None
        upload = None
        if checkpoint is not None:
            # The iteration travels with the checkpoint, so a resume can say where it resumed.
            (Path(checkpoint) / CHECKPOINT_META).write_text(json.dumps({"iter": step}))
            ckpt = ray.train.Checkpoint.from_directory(str(checkpoint))
            storage = ray.train.get_context().get_storage()
            if storage.storage_filesystem.type_name == "local":
                upload = link_checkpoint
        to_ray = dict(metrics)
        if self.resumed_from is not None:
            to_ray[RESUMED_KEY] = float(self.resumed_from)
            self.resumed_from = None
        ray.train.report(to_ray, checkpoint=ckpt, checkpoint_upload_fn=upload)
        self.report_s += time.time() - t

    def batch_choice(self, info: dict[str, Any]) -> None:
        """The engine's OOM fallback chose a smaller micro-batch (or reused one on resume):
        rank 0 records it in status.json (``batch``) and the W&B run's config."""
        self.batch = dict(info)
        if self.rank != 0:
            return
        trial_dir = self.layout.trial_dir(self.trial.name)
        status = read_status_of(trial_dir) or {}
        own = ("schema", "trial", "state", "message", "started", "updated")
        extra = {k: v for k, v in status.items() if k not in own} | {"batch": self.batch}
        write_status(trial_dir, status.get("state", "running"), status.get("message", ""), extra=extra)
        if self.tracker is not None:
            self.tracker.update_config({"batch": self.batch})

    def status_extra(self) -> dict[str, Any]:
        """What the reporter adds to the trial's final status (the micro-batch choice)."""
        return {"batch": self.batch} if self.batch else {}

    def report_records(self, trial: str, iteration: int, records: Any) -> None:
        """Rank 0: the final evaluation's per-image records into the trial's results store
        (``records/eval-<iter>.parquet``; the report's bootstrap intervals read them)."""
        if self.rank != 0:
            return
        t = time.time()
        write_eval_records(self.layout.trial_dir(self.trial.name), trial, iteration, records)
        self.report_s += time.time() - t

    def close(self, ok: bool) -> float:
        """Finish the W&B run; returns the seconds that took."""
        t = time.time()
        if self.tracker is not None:
            self.tracker.finish(exit_code=0 if ok else 1)
        return time.time() - t


def link_checkpoint(checkpoint: Any, dir_name: str) -> Any:
    """Ray's checkpoint upload for storage on a local (or mounted) disk: hard links instead
    of copies. A checkpoint is written once and never modified, so Ray's copy and the
    engine's may share their files; it costs no time and no extra disk (a ConvNeXt-T
    checkpoint with AdamW state is ~350 MB). Across file systems it copies."""
    import ray.train

    storage = ray.train.get_context().get_storage()
    dest = Path(storage.experiment_fs_path, dir_name)
    dest.mkdir(parents=True, exist_ok=True)
    for src in Path(checkpoint.path).rglob("*"):
        target = dest / src.relative_to(checkpoint.path)
        if src.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(src, target)
        except OSError:  # another file system (EXDEV) or no hard links there
            shutil.copy2(src, target)
    return ray.train.Checkpoint(str(dest), filesystem=storage.storage_filesystem)


def checkpoint_iteration(checkpoint_dir: Path) -> int | None:
    """The iteration a checkpoint folder was written at (from its ``raybench.json``)."""
    meta_file = checkpoint_dir / CHECKPOINT_META
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return meta.get("iter")


def record_resume(layout: ExperimentLayout, trial: str, checkpoint_dir: Path) -> None:
    """Append to ``trials/<trial>/resumes.jsonl`` where this run resumed from (an audit trail)."""
    record = {"from_iter": checkpoint_iteration(checkpoint_dir), "time": time.time()}
    log.info("%s: resuming from the checkpoint of iteration %s", trial, record["from_iter"])
    fs, path = resolve(layout.trial_dir(trial))
    fs.create_dir(path, recursive=True)
    target = f"{path}/{RESUMES_FILE}"
    try:
        old = fs.open_input_stream(target).read().decode()
    except (FileNotFoundError, OSError):
        old = ""
    with fs.open_output_stream(target) as f:
        f.write((old + json.dumps(record) + "\n").encode())


__all__ = [
    "CHECKPOINT_META",
    "RESUMED_KEY",
    "RESUMES_FILE",
    "RayReporter",
    "checkpoint_iteration",
    "link_checkpoint",
    "record_resume",
]
