"""The two functions Ray runs for a trial.

- :func:`run_trial` is the Ray Tune *function trainable* (the trial's driver, 1 CPU by
  default): it builds a ``TorchTrainer`` for its trial and waits for it.
- :func:`train_worker` is the Ray Train *worker function*: it runs raybench's engine loop
  (the same loop ``raybench train`` runs without Ray) and reports through Ray.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raybench.study import TrialSpec
from raybench.sweep.layout import ExperimentLayout

# Keys of the Tune config / Train loop config (plain JSON-able values only).
TRIAL_KEY = "trial"
CHECKPOINT_META = "raybench.json"
RESUMES_FILE = "resumes.jsonl"
FAULT_ENV = "RAYBENCH_FAULT_INJECT"
NAN_ENV = "RAYBENCH_NAN_INJECT"
#: ``failure.kind`` in status.json of a failure that a retry would only repeat.
DETERMINISTIC = "deterministic"


class TrialFailed(RuntimeError):
    """The trial failed in a way no retry can fix (a non-finite loss): its message is the
    worker's own (``NonFiniteLossError: non-finite loss at iteration k: <term> = nan ...``)."""


def maybe_inject_fault(trial: str, iteration: int, layout: ExperimentLayout) -> None:
    """Failure drill: ``RAYBENCH_FAULT_INJECT="<trial glob>@<iter>"`` SIGKILLs the train
    worker once when it reports that iteration (a marker file makes it happen only once).

    This is how the tests (and a cautious user) prove that a lost worker costs only the
    iterations since the last checkpoint.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec or "@" not in spec:
        return
    import fnmatch
    import signal

    from raybench.results.store import resolve

    pattern, _, at = spec.rpartition("@")
    if not fnmatch.fnmatchcase(trial, pattern) or iteration != int(at):
        return
    fs, path = resolve(layout.trial_dir(trial))
    marker = f"{path}/fault-injected-at-{iteration}"
    if fs.get_file_info(marker).type.name != "NotFound":
        return
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(marker) as f:
        f.write(str(os.getpid()).encode())
    print(f"[raybench] fault drill: killing the train worker of {trial} at iteration {iteration}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


class _NanLoss:
    """A task whose ``train_step`` returns a NaN ``term`` at iteration ``at`` (1-based, as in
    the metrics); everything else is the wrapped task's."""

    def __init__(self, task: Any, at: int, term: str | None, start: int, accum: int) -> None:
        self._task, self._at, self._term = task, at, term
        self._start, self._accum, self._calls = start, accum, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def train_step(self, model: Any, batch: Any) -> Any:
        losses = self._task.train_step(model, batch)
        iteration = self._start + self._calls // self._accum + 1
        self._calls += 1
        if iteration != self._at:
            return losses
        term = self._term or next(iter(losses))
        if term not in losses:
            raise ValueError(f"{NAN_ENV}: no loss term {term!r} (terms: {', '.join(losses)})")
        return dict(losses) | {term: losses[term] * float("nan")}


@contextlib.contextmanager
def nan_drill(trial: TrialSpec, start: int, world_size: int) -> Iterator[None]:
    """Failure drill: ``RAYBENCH_NAN_INJECT="<trial glob>@<iter>[:<term>]"`` makes the loss
    term ``<term>`` (default: the task's first) NaN at iteration ``<iter>`` of matching
    trials, every time that iteration is trained (a real non-finite loss is deterministic
    too), so the engine stops with its ``NonFiniteLossError``. Off (nothing wrapped) unless set.

    The engine builds its task itself; the drill wraps ``raybench.engine.loop.build_task``
    in this worker process for the duration of the run.
    """
    spec = os.environ.get(NAN_ENV, "")
    pattern, _, rest = spec.rpartition("@")
    at, _, term = rest.partition(":")
    if not pattern or not at.isdigit() or not fnmatch.fnmatchcase(trial.name, pattern):
        yield
        return
    import raybench.engine.loop as loop

    scaling = dataclasses.replace(trial.scaling, workers=world_size)
    _, accum = scaling.per_worker_batch(trial.recipe.batch_size)
    original = loop.build_task

    def build_task(t: TrialSpec) -> Any:
        return _NanLoss(original(t), int(at), term or None, start, accum)

    loop.build_task = build_task
    try:
        yield
    finally:
        loop.build_task = original


class RayReporter:
    """Engine reporter for a Ray Train worker: every rank reports (Train V2 expects all
    ranks to call ``ray.train.report``); rank 0 also logs to W&B and the Parquet store."""

    def __init__(self, trial: TrialSpec, layout: ExperimentLayout, rank: int):
        from raybench.results.store import ResultsWriter
        from raybench.tracking import WandbTracker

        self.trial = trial
        self.layout = layout
        self.rank = rank
        self.t0 = time.time()
        self.results = None
        self.tracker = None
        self.tracker_start_s = 0.0
        self.report_s = 0.0  # time spent in report(): W&B, Parquet, Ray report + checkpoint upload
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
        ray.train.report(dict(metrics), checkpoint=ckpt, checkpoint_upload_fn=upload)
        self.report_s += time.time() - t

    def report_records(self, trial: str, iteration: int, records: Any) -> None:
        """Rank 0: the final evaluation's per-image records into the trial's results store
        (``records/eval-<iter>.parquet``; the report's bootstrap intervals read them)."""
        if self.rank != 0:
            return
        from raybench.results.store import write_eval_records

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


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train worker function: resume from Ray's checkpoint if any, run the engine."""
    import tempfile

    import ray.train
    import torch

    from raybench.engine import NonFiniteLossError, train
    from raybench.results.store import write_status

    trial = TrialSpec.from_json(config[TRIAL_KEY])
    layout = ExperimentLayout(**config["layout"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    if not trial.scaling.use_gpu:
        torch.set_num_threads(max(1, int(trial.scaling.cpus_per_worker)))
    # Launch time: from the trial driver's start to this worker running (Ray's overhead).
    base_extra = {
        "metric": trial.dataset.headline_metric,
        "launch_s": time.time() - float(config.get("driver_started", time.time())),
    }
    reporter = RayReporter(trial, layout, rank)
    base_extra["wandb_start_s"] = round(reporter.tracker_start_s, 3)
    if rank == 0:
        write_status(layout.trial_dir(trial.name), "running", extra=base_extra)
    ok = False
    engine_start = time.time()
    try:
        with tempfile.TemporaryDirectory(prefix=f"raybench-{trial.name}-") as work:
            checkpoint = ray.train.get_checkpoint()
            if checkpoint is not None:
                with checkpoint.as_directory() as resume_dir:
                    start = checkpoint_iteration(Path(resume_dir))
                    if rank == 0:
                        record_resume(layout, trial.name, Path(resume_dir))
                    with nan_drill(trial, start or 0, ctx.get_world_size()):
                        final = train(trial, Path(work), reporter=reporter, resume_from=Path(resume_dir))
            else:
                with nan_drill(trial, 0, ctx.get_world_size()):
                    final = train(trial, Path(work), reporter=reporter, resume_from=None)
        ok = True
    except NonFiniteLossError as exc:
        # Deterministic: a retry from the last checkpoint would compute the same NaN. Every
        # worker raises it together (the losses are averaged over workers first), so every
        # worker returns normally here and Ray Train does not restart the group; the trial's
        # driver reads this status and fails the Tune trial with this message.
        if rank == 0:
            failure = {"kind": DETERMINISTIC, "type": type(exc).__name__}
            failure |= {"iteration": exc.iteration, "term": exc.term}
            write_status(
                layout.trial_dir(trial.name),
                "failed",
                f"{type(exc).__name__}: {exc}",
                extra=base_extra | {"failure": failure, "session": config.get("session")},
            )
        print(f"[raybench] {trial.name}: {type(exc).__name__}: {exc}", flush=True)
        return
    except BaseException as exc:
        if rank == 0:
            write_status(
                layout.trial_dir(trial.name),
                "failed",
                f"{type(exc).__name__}: {exc}",
                extra=base_extra,
            )
        raise
    finally:
        engine_s = time.time() - engine_start
        wandb_finish_s = reporter.close(ok)
    if rank == 0:
        timings = {
            "engine_s": round(engine_s, 3),
            "report_s": round(reporter.report_s, 3),
            "wandb_finish_s": round(wandb_finish_s, 3),
        }
        write_status(
            layout.trial_dir(trial.name),
            "finished",
            extra=base_extra | timings | {"final": _jsonable(final)},
        )


def checkpoint_iteration(checkpoint_dir: Path) -> int | None:
    """The iteration a checkpoint folder was written at (from its ``raybench.json``)."""
    meta_file = checkpoint_dir / CHECKPOINT_META
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return meta.get("iter")


def record_resume(layout: ExperimentLayout, trial: str, checkpoint_dir: Path) -> None:
    """Append to ``trials/<trial>/resumes.jsonl`` where this run resumed from (an audit trail)."""
    record = {"from_iter": checkpoint_iteration(checkpoint_dir), "time": time.time()}
    print(f"[raybench] {trial}: resuming from the checkpoint of iteration {record['from_iter']}", flush=True)
    from raybench.results.store import resolve

    fs, path = resolve(layout.trial_dir(trial))
    fs.create_dir(path, recursive=True)
    target = f"{path}/{RESUMES_FILE}"
    try:
        old = fs.open_input_stream(target).read().decode()
    except (FileNotFoundError, OSError):
        old = ""
    with fs.open_output_stream(target) as f:
        f.write((old + json.dumps(record) + "\n").encode())


def _jsonable(metrics: Any) -> dict[str, float]:
    if not isinstance(metrics, dict):
        return {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def run_trial(config: dict[str, Any], specs: dict[str, str], settings: dict[str, Any]) -> None:
    """Ray Tune function trainable: one TorchTrainer per trial, named after the trial."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from raybench.results.store import ray_storage, read_status_of

    name = config[TRIAL_KEY]
    if name not in specs:
        raise ValueError(f"trial {name!r} of the restored experiment is not in the study any more")
    trial = TrialSpec.from_json(specs[name])
    layout = ExperimentLayout(**settings["layout"])
    session = settings.get("session")
    status = read_status_of(layout.trial_dir(name))
    if status and status.get("state") == "finished":
        # A finished trial is never trained again (e.g. its driver died after the last report).
        print(f"[raybench] {name}: already finished, not re-training")
        tune.report(dict(status.get("final", {})) | {"already_finished": 1.0})
        return
    if _deterministic_failure(status) and session and status.get("session") == session:
        # A Tune retry within the same run: training again would end the same way.
        print(f"[raybench] {name}: not retried (deterministic failure; --resume tries again)", flush=True)
        raise TrialFailed(str(status.get("message")))
    s = trial.scaling
    storage_path, storage_fs = ray_storage(layout.train_storage)
    per_worker = {"CPU": float(s.cpus_per_worker)}
    if s.use_gpu:
        per_worker["GPU"] = float(s.gpus_per_worker)
    per_worker |= {k: float(v) for k, v in s.resources_per_worker.items()}  # e.g. a spot-GPU node label
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            TRIAL_KEY: trial.to_json(),
            "layout": settings["layout"],
            "driver_started": time.time(),
            "session": session,
        },
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.workers, use_gpu=s.use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=int(settings.get("worker_retries", 2))),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
            # Train's print patch tees prints into its logger when W&B wraps stdout: every
            # line would reach the console twice. Plain prints still reach the driver.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"} | settings.get("env", {})},
        ),
    )
    fit_started = time.time()
    try:
        trainer.fit()
    except Exception as exc:
        # A worker that failed with an exception recorded it itself (keep that message); one
        # that was killed could not: then the driver records the failure's own last line.
        from raybench.results.store import write_status

        status = read_status_of(layout.trial_dir(name))
        if not _worker_reported(status, exc, since=fit_started):
            write_status(
                layout.trial_dir(name),
                "failed",
                failure_message(exc),
                extra={"metric": trial.dataset.headline_metric},
            )
        raise
    status = read_status_of(layout.trial_dir(name))
    if _deterministic_failure(status) and float(status.get("updated", 0)) >= fit_started:
        raise TrialFailed(str(status.get("message")))


def _deterministic_failure(status: dict[str, Any] | None) -> bool:
    """Whether status.json records a failure a retry would only repeat (a non-finite loss)."""
    if not status or status.get("state") != "failed":
        return False
    failure = status.get("failure")
    return isinstance(failure, dict) and failure.get("kind") == DETERMINISTIC


def _worker_reported(status: dict[str, Any] | None, exc: BaseException, since: float) -> bool:
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


def forwarded_env() -> dict[str, str]:
    """Environment the workers need (W&B mode/key, offline hubs, S3 endpoint), taken from the
    sweep driver's environment at launch; values travel in memory, never into a file."""
    keys = (
        "WANDB_MODE",
        "WANDB_API_KEY",
        "WANDB_PROJECT",
        "WANDB_ENTITY",
        "HF_HUB_OFFLINE",
        "RAYBENCH_WANDB_DIR",
        FAULT_ENV,
        NAN_ENV,
        "RAYBENCH_BATCH_TRACE",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
    )
    return {k: os.environ[k] for k in keys if k in os.environ}


def dumps_specs(trials: list[TrialSpec]) -> dict[str, str]:
    return {t.name: t.to_json() for t in trials}


__all__ = [
    "RayReporter",
    "TrialFailed",
    "dumps_specs",
    "failure_message",
    "forwarded_env",
    "nan_drill",
    "run_trial",
    "train_worker",
]
