"""The sweep on Ray (CPU, local Ray): Tune trials of Train TorchTrainers, W&B, resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from raybench.engine.loaders import BATCH_TRACE_ENV
from raybench.results.store import read_results, read_status
from raybench.study import load_study
from raybench.sweep import ExperimentLayout, SweepOptions, run_study
from raybench.sweep.runner import max_concurrency, resume_command
from raybench.sweep.trainable import FAULT_ENV, NAN_ENV, RESUMES_FILE, failure_message
from raybench.tracking import find_offline_runs, read_offline_run, run_id
from tests.helpers.sweep import REPO, tiny_study

pytestmark = pytest.mark.timeout(900)


def _final(results, trial: str, metric: str) -> float:
    rows = results[(results.trial == trial) & (results.metric == metric)]
    return float(rows.sort_values("iter").value.iloc[-1])


def test_subset_runs_end_to_end_with_wandb_and_results(tmp_path, ray_session, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    study = load_study(tiny_study(tmp_path, iterations=4, checkpoint_period=2, eval_period=2))
    options = SweepOptions(storage=str(tmp_path / "store"), driver_cpus=0)
    summary = run_study(study, options)
    names = {t.name for t in study.trials}
    assert set(summary) == names and not any(s["error"] for s in summary.values())
    out = capsys.readouterr().out.splitlines()
    # The resume command is printed at the start and, after a run that went well too, at the end.
    cmd = resume_command(study, options, ExperimentLayout.create(options.storage, "tiny"))
    assert out[-1] == f"[raybench] resume with: {cmd}"
    assert f"[raybench] resume after any failure with: {cmd}" in out
    # Concurrency on the Ray this test session started: 2 CPUs / (0 driver + 1 worker CPU).
    assert "[raybench] concurrency: 2 -- the Ray this process started (2 CPUs, 0 GPUs)" in "\n".join(out)
    root = tmp_path / "store" / "tiny"
    # Results read back from the experiment folder: every trial, eval points at 2 and 4.
    results = read_results(str(root))
    status = read_status(str(root))
    assert set(status) == names and all(s["state"] == "finished" for s in status.values())
    # ... and the two trials really ran at once: a driver asking 0.01 CPU on top of its worker's
    # 1 made the second worker wait for the first trial to end (2.02 CPUs > 2).
    (a_start, a_end), (b_start, b_end) = sorted((s["started"], s["updated"]) for s in status.values())
    assert b_start < a_end, "the trials ran one after the other"
    for name in names:
        ap = results[(results.trial == name) & (results.metric == "val/box_AP50")]
        assert sorted(ap.iter.tolist()) == [2, 4]
        assert (ap.value >= 0).all() and (ap.value <= 100).all()
        assert (root / "train" / name).is_dir()  # the Train run is named after the trial
    # W&B offline files: one run per trial with its config and history.
    runs = {r["run"]["name"]: r for r in (read_offline_run(p, wait_s=30) for p in find_offline_runs(root))}
    assert set(runs) == names
    for name, run in runs.items():
        assert run["run"]["group"] == "tiny" and run["run"]["job_type"] == "gdxray"
        assert run["config"]["regime"] in ("frozen", "full") and run["config"]["trial_name"] == name
        assert run["config"]["recipe"]["schedule"]["iterations"] == 4
        steps = [h["_step"] for h in run["history"]]
        assert steps == sorted(steps) and steps[-1] == 4
        assert any("val/box_AP50" in h for h in run["history"])


def test_worker_crash_resumes_to_identical_final_metrics(tmp_path, ray_session, monkeypatch):
    """The worker is SIGKILLed at iteration 5; Ray Train restarts it from its last registered
    checkpoint and the trial ends with the same metrics as an uninterrupted run."""
    from raybench.engine import train

    path = tiny_study(tmp_path, iterations=6, checkpoint_period=2, eval_period=3, regimes=("full",))
    study = load_study(path)
    (trial,) = study.trials
    monkeypatch.setenv(FAULT_ENV, f"{trial.name}@5")
    summary = run_study(study, SweepOptions(storage=str(tmp_path / "store"), driver_cpus=0))
    assert summary[trial.name]["error"] is None
    root = tmp_path / "store" / "tiny"
    trial_dir = root / "trials" / trial.name
    assert (trial_dir / "fault-injected-at-5").is_file()
    resumes = [json.loads(x) for x in (trial_dir / RESUMES_FILE).read_text().splitlines()]
    # Ray registers a reported checkpoint asynchronously: the one of iteration 4 may not be
    # registered yet when the worker dies at 5, so the restart uses 4 or 2 — never scratch.
    assert len(resumes) == 1 and resumes[0]["from_iter"] in (2, 4)
    ray_final = read_status(str(root))[trial.name]["final"]

    # The same trial without Ray and without interruption (1 thread, like the Ray worker).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        straight = train(trial, tmp_path / "straight", verbose=False)
    finally:
        torch.set_num_threads(threads)
    for key in ("train/loss", "val/box_AP", "val/box_AP50"):
        assert ray_final[key] == pytest.approx(straight[key], abs=1e-6), key


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"grid exited early with {proc.returncode}")
        time.sleep(0.5)
    raise AssertionError("timed out waiting for the grid")


def _grid(study: Path, storage: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "experiments" / "run_grid.py"),
        "--study",
        str(study),
        "--storage",
        str(storage),
        "--num-cpus",
        "2",
        "--no-report",
        *extra,
    ]


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)


def test_driver_crash_then_resume(tmp_path):
    """SIGKILL the whole driver mid-grid; --resume finishes the grid, does not re-run the
    finished trial, and continues the interrupted one from its checkpoint."""
    path = tiny_study(tmp_path, iterations=10, checkpoint_period=2, eval_period=5)
    study = load_study(path)
    first, second = (t.name for t in study.trials)
    store = tmp_path / "store"
    root = store / "tiny"
    env = os.environ | {"WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "grid1.log", "w")
    # 1 driver CPU + 1 worker CPU on 2 CPUs: the trials run one after the other.
    proc = subprocess.Popen(
        _grid(path, store, "--driver-cpus", "1"),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        cwd=tmp_path,
    )

    def finished(name: str) -> bool:
        f = root / "trials" / name / "status.json"
        return f.is_file() and json.loads(f.read_text())["state"] == "finished"

    def checkpoints(name: str) -> set[str]:
        d = root / "train" / name
        return {p.name for p in d.glob("checkpoint_*")} if d.is_dir() else set()

    def registered(name: str) -> int:
        """Checkpoints Ray Train has registered (what a resume starts from): a checkpoint
        folder alone may still be unregistered when the driver dies, and is then ignored."""
        try:
            snapshot = json.loads((root / "train" / name / "checkpoint_manager_snapshot.json").read_text())
        except (OSError, ValueError):
            return 0
        return len(snapshot.get("checkpoint_results", []))

    try:
        done_first = [n for n in (first, second)]
        _wait_for(lambda: any(finished(n) for n in done_first), 600, proc)
        ended = first if finished(first) else second
        running = second if ended == first else first
        _wait_for(lambda: registered(running) >= 1, 300, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    assert not finished(running)
    ended_ckpts = checkpoints(ended)
    ended_status = (root / "trials" / ended / "status.json").read_text()

    resumed = _run(_grid(path, store, "--driver-cpus", "1", "--resume"), env, tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    status = read_status(str(root))
    assert {n: s["state"] for n, s in status.items()} == {first: "finished", second: "finished"}
    # The finished trial was not trained again ...
    assert checkpoints(ended) == ended_ckpts
    assert (root / "trials" / ended / "status.json").read_text() == ended_status
    assert not (root / "trials" / ended / RESUMES_FILE).exists()
    # ... and the interrupted one continued from its checkpoint, not from scratch.
    resumes = [json.loads(x) for x in (root / "trials" / running / RESUMES_FILE).read_text().splitlines()]
    assert resumes and resumes[0]["from_iter"] >= 2
    results = read_results(str(root))
    assert int(results[results.trial == running].iter.max()) == 10
    assert _final(results, running, "val/box_AP50") >= 0


def test_one_and_two_workers_see_the_same_global_batches(tmp_path, ray_session, monkeypatch):
    """Cluster-shape invariance: global batch 2 as 1 x 2 or 2 x 1 (gloo). The batch trace
    shows both runs load the same samples in the same order (rank 0's share then rank 1's is
    the 1-worker batch, iteration by iteration); the per-iteration losses agree within 2 %."""
    losses, traces = {}, {}
    for workers in (1, 2):
        trace_dir = tmp_path / f"trace{workers}"
        monkeypatch.setenv(BATCH_TRACE_ENV, str(trace_dir))
        path = tiny_study(
            tmp_path / f"w{workers}",
            iterations=3,
            checkpoint_period=3,
            eval_period=3,
            workers=workers,
            cpus_per_worker=1.0 / workers,
            regimes=("frozen",),
            name=f"shape{workers}",
        )
        study = load_study(path)
        summary = run_study(study, SweepOptions(storage=str(tmp_path / f"store{workers}"), driver_cpus=0))
        assert not any(s["error"] for s in summary.values())
        results = read_results(str(tmp_path / f"store{workers}" / f"shape{workers}"))
        rows = results[results.metric == "train/loss_rpn_box_reg"].sort_values("iter")
        losses[workers] = rows.value.tolist()
        assert len(losses[workers]) == 3
        files = sorted(p.name for p in trace_dir.iterdir())
        assert files == [f"batches.rank{r}.jsonl" for r in range(workers)]
        traces[workers] = [
            [json.loads(x) for x in (trace_dir / f"batches.rank{r}.jsonl").read_text().splitlines()]
            for r in range(workers)
        ]
    (one,) = traces[1]
    rank0, rank1 = traces[2]
    assert [x["iter"] for x in one] == [x["iter"] for x in rank0] == [x["iter"] for x in rank1] == [1, 2, 3]
    assert {x["rank"] for x in rank0} == {0} and {x["rank"] for x in rank1} == {1}
    for a, b, single in zip(rank0, rank1, one):
        assert len(a["samples"]) == len(b["samples"]) == 1 and len(single["samples"]) == 2
        assert a["samples"] + b["samples"] == single["samples"], single["iter"]
    # The 3 global batches differ (the stream walks through the shuffled training set), so
    # the check has teeth.
    assert len({tuple(x["samples"]) for x in one}) == 3
    # Same images, so the same loss up to sampling: torchvision's RPN and ROI heads pick the
    # anchors / proposals they train on at random (BalancedPositiveNegativeSampler, per
    # image), from each worker's own torch RNG; with 2 workers the second image's picks come
    # from another stream. Stated tolerance: 2 % relative.
    assert losses[2] == pytest.approx(losses[1], rel=0.02)


def test_s3_storage_and_resume_into_an_empty_folder(tmp_path, s3_bucket, moto_endpoint):
    """--storage s3://... against moto: the trial's worker dies with no retries left, so the
    first run fails; --resume from a fresh, empty working folder continues it from the
    checkpoint in S3 and finishes it."""
    path = tiny_study(tmp_path, iterations=6, checkpoint_period=2, eval_period=3, regimes=("full",))
    (trial,) = load_study(path).trials
    storage = f"s3://{s3_bucket}/runs"
    env = os.environ | {"WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    first_dir, second_dir = tmp_path / "first", tmp_path / "empty"
    first_dir.mkdir()
    second_dir.mkdir()
    no_retries = ("--driver-cpus", "0", "--worker-retries", "0", "--trial-retries", "0")
    first = _run(_grid(path, storage, *no_retries), env | {FAULT_ENV: f"{trial.name}@5"}, first_dir)
    assert first.returncode != 0  # the trial failed (no retries allowed)
    root = f"{storage}/tiny"
    assert read_status(root)[trial.name]["state"] == "failed"

    second = _run(_grid(path, storage, "--driver-cpus", "0", "--resume"), env, second_dir)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert list(second_dir.iterdir()) == []  # nothing needed (or left) locally
    assert read_status(root)[trial.name]["state"] == "finished"
    results = read_results(root)
    assert int(results[results.trial == trial.name].iter.max()) == 6
    from raybench.results.store import resolve

    fs, p = resolve(f"{root}/trials/{trial.name}/{RESUMES_FILE}")
    resumes = [json.loads(x) for x in fs.open_input_stream(p).read().decode().splitlines()]
    assert resumes[-1]["from_iter"] in (2, 4)


# ---- items of the issue-6 audit: restart-errored, NaN messages, concurrency, resume command ----


def test_restart_errored_starts_errored_trials_fresh(tmp_path, ray_session, monkeypatch, capsys):
    """A trial killed after writing checkpoints (no retries left) errors; --resume
    --restart-errored starts it at iteration 1 -- no checkpoint handed over, no resume
    recorded -- and leaves the finished trial alone."""
    study = load_study(tiny_study(tmp_path, iterations=6, checkpoint_period=2, eval_period=3))
    frozen, full = (t.name for t in study.trials)
    assert "frozen" in frozen and "full" in full
    store = tmp_path / "store"
    root = store / "tiny"
    monkeypatch.setenv(FAULT_ENV, f"{full}@5")
    no_retries = SweepOptions(storage=str(store), driver_cpus=0, worker_retries=0, trial_retries=0)
    first = run_study(study, no_retries)
    assert first[frozen]["error"] is None and first[full]["error"]
    failed = read_status(str(root))[full]
    assert failed["state"] == "failed"
    # The driver's record of a killed worker: one line, the worker's error, no traceback.
    # (Ray names it WorkerHealthCheckFailedError or ActorDiedError, depending on who noticed.)
    assert re.match(r"WorkerGroupError: worker 0: \w+Error: \S", failed["message"]), failed["message"]
    assert "\n" not in failed["message"] and len(failed["message"]) < 500
    assert sorted(p.name for p in (root / "train" / full).glob("checkpoint_*"))  # it had checkpoints
    frozen_status = (root / "trials" / frozen / "status.json").read_text()
    frozen_ckpts = sorted(p.name for p in (root / "train" / frozen).glob("checkpoint_*"))
    capsys.readouterr()

    options = SweepOptions(
        storage=str(store), driver_cpus=0, resume=True, restart_errored=True, only=full, worker_retries=0
    )
    second = run_study(study, options)
    out = capsys.readouterr().out
    assert not any(s["error"] for s in second.values())
    assert f"[raybench] --restart-errored: starting fresh (iteration 0): {full}\n" in out
    assert f"[raybench] warning: --only '{full}' is ignored with --resume" in out
    trial_dir = root / "trials" / full
    assert not (trial_dir / RESUMES_FILE).exists()  # no checkpoint was handed to the worker
    assert (trial_dir / "fault-injected-at-5").is_file()  # the drill marker stays (fires once)
    status = read_status(str(root))[full]
    assert status["state"] == "finished" and status["attempts"] == 1
    rows = read_results(str(root), dedupe_rows=False)
    loss = rows[(rows.trial == full) & (rows.metric == "train/loss")]
    # Iteration 1 was trained twice (first run, fresh run) from the same initial weights ...
    assert loss[loss.iter == 1].value.tolist() == [pytest.approx(loss[loss.iter == 1].value.iloc[0])] * 2
    assert int(loss.iter.max()) == 6
    # ... the finished trial was not touched.
    assert (root / "trials" / frozen / "status.json").read_text() == frozen_status
    assert sorted(p.name for p in (root / "train" / frozen).glob("checkpoint_*")) == frozen_ckpts
    assert not (root / "trials" / frozen / RESUMES_FILE).exists()
    # The fresh start is counted and logs to a new W&B run (W&B drops steps a run already has).
    assert (trial_dir / "fresh_starts").read_text() == "1\n"
    assert not (root / "trials" / frozen / "fresh_starts").exists()
    ids = {p.parent.name.rsplit("-", 1)[1] for p in find_offline_runs(root / "wandb" / full)}
    assert ids == {run_id(root.name, full), run_id(root.name, full, 1)}


def test_nan_loss_fails_the_trial_once_with_its_message(tmp_path, ray_session, monkeypatch):
    """A NaN at iteration 3 fails the trial with the engine's own message; it is
    deterministic, so neither Ray Train (2 worker retries) nor Tune (1 trial retry) trains it
    again; --resume does try again, from the last checkpoint."""
    path = tiny_study(tmp_path, iterations=4, checkpoint_period=2, eval_period=4, regimes=("frozen",))
    study = load_study(path)
    (trial,) = study.trials
    store = tmp_path / "store"
    root = store / "tiny"
    monkeypatch.setenv(NAN_ENV, f"{trial.name}@3:loss_classifier")
    expected = "NonFiniteLossError: non-finite loss at iteration 3: loss_classifier = nan"
    summary = run_study(study, SweepOptions(storage=str(store), driver_cpus=0))
    assert expected.split(": ", 1)[1] in summary[trial.name]["error"]
    status = read_status(str(root))[trial.name]
    assert status["state"] == "failed" and status["message"].startswith(expected), status["message"]
    assert status["failure"] == {
        "kind": "deterministic",
        "type": "NonFiniteLossError",
        "iteration": 3,
        "term": "loss_classifier",
    }
    assert status["attempts"] == 1  # no Train or Tune retry trained it again
    assert not (root / "trials" / trial.name / RESUMES_FILE).exists()
    results = read_results(str(root))
    assert int(results[results.trial == trial.name].iter.max()) == 2

    # Resumable: a new run resumes from the checkpoint of iteration 2 (and meets the NaN again).
    again = run_study(study, SweepOptions(storage=str(store), driver_cpus=0, resume=True))
    assert expected.split(": ", 1)[1] in again[trial.name]["error"]
    resumes = [json.loads(x) for x in (root / "trials" / trial.name / RESUMES_FILE).read_text().splitlines()]
    assert [r["from_iter"] for r in resumes] == [2]
    status = read_status(str(root))[trial.name]
    assert status["message"].startswith(expected) and status["attempts"] == 2


def test_failure_message_is_the_workers_exception_line():
    class GroupError(Exception):  # the shape of ray.train.WorkerGroupError
        def __init__(self, failures):
            super().__init__("Training failed due to worker errors:\n" + "  File 'x.py'\n" * 500)
            self.worker_failures = failures

    err = GroupError({1: KeyError("b"), 0: ValueError("bad value")})
    assert failure_message(err) == "GroupError: worker 0 (and 1 more): ValueError: bad value"
    frames = '  File "loop.py", line 1, in train\n    step()\n' * 300
    tail = "raybench.engine.accel.NonFiniteLossError: non-finite loss at iteration 7: loss_mask = nan"
    text = f"Traceback (most recent call last):\n{frames}{tail}\n"
    assert failure_message(RuntimeError(text)) == tail  # not cut off, however long the traceback
    assert failure_message(RuntimeError("one line")) == "RuntimeError: one line"
    assert len(failure_message(RuntimeError("x" * 5000))) == 2000


def test_max_concurrency_caps_local_ray_only(tmp_path, monkeypatch):
    import ray

    study = load_study(tiny_study(tmp_path, workers=2, cpus_per_worker=4, use_gpu=True, gpus_per_worker=1))
    trials = list(study.trials)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 64.0, "GPU": 4.0})
    # Local: 4 GPUs / (2 workers x 1 GPU) = 2 (CPUs would allow 64 / (1 + 2 x 4) = 7).
    n, why = max_concurrency(trials, 1.0, None, "local")
    assert n == 2
    assert why == "local Ray started by raybench (64 CPUs, 4 GPUs), each trial takes 9 CPUs + 2 GPUs"
    assert max_concurrency(trials, 1.0, 1, "local")[0] == 1
    assert max_concurrency(trials, 1.0, 5, "local")[0] == 2
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 18.0})
    assert max_concurrency(trials, 1.0, None, "local")[0] == 1  # no GPU: nothing fits, still 1
    cpu_only = list(load_study(tiny_study(tmp_path / "cpu", workers=1, cpus_per_worker=1)).trials)
    assert max_concurrency(cpu_only, 0.5, None, "caller") == (
        12,
        "the Ray this process started (18 CPUs, 0 GPUs), each trial takes 1.5 CPUs",
    )

    # Joined cluster, autoscaling GPU workers from 0: no GPU yet is not a cap.
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    n, why = max_concurrency(trials, 1.0, None, "joined")
    assert n is None and why.startswith("joined cluster with no GPU yet: no cap")
    assert max_concurrency(trials, 1.0, 8, "joined") == (
        8,
        "joined cluster: the study's scaling.max_concurrent_trials = 8",
    )
    # A joined cluster as it is now (fixed size, or GPU nodes already up): what fits, or the
    # drivers take the CPUs the workers need and the worker groups time out.
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 64.0, "GPU": 4.0})
    n, why = max_concurrency(trials, 1.0, None, "joined")
    assert n == 2 and why.startswith(
        "joined cluster, as it is now (64 CPUs, 4 GPUs), each trial takes 9 CPUs"
    )
    assert "set scaling.max_concurrent_trials to run more" in why
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    assert max_concurrency(cpu_only, 0.5, None, "joined")[0] == 1  # a 2-CPU cluster joined via auto


def test_resume_command_carries_every_option(tmp_path):
    import argparse
    import shlex

    from raybench.sweep.cli import add_sweep_arguments

    study = load_study(tiny_study(tmp_path))
    storage = tmp_path / "my runs"
    options = SweepOptions(
        storage=str(storage),
        experiment="e1",
        resume=False,
        restart_errored=True,
        only="gdxray-*",
        address="ray://head:10001",
        num_cpus=8,
        driver_cpus=0.5,
        worker_retries=5,
        trial_retries=0,
        no_report=True,
    )
    cmd = resume_command(study, options, ExperimentLayout.create(options.storage, "e1"))
    assert cmd == (
        f"python experiments/run_grid.py --study {study.source} --storage '{storage}' --experiment e1 "
        "--address ray://head:10001 --num-cpus 8 --driver-cpus 0.5 --worker-retries 5 --trial-retries 0 "
        "--no-report --resume"
    )
    # It parses back (run_grid's own arguments) into the same options, --resume on, --only off.
    parser = argparse.ArgumentParser()
    parser.add_argument("--study")
    add_sweep_arguments(parser)
    args = parser.parse_args(shlex.split(cmd)[2:])
    assert (args.study, args.storage, args.experiment, args.address) == (
        study.source,
        str(storage),
        "e1",
        "ray://head:10001",
    )
    assert (args.num_cpus, args.driver_cpus, args.worker_retries, args.trial_retries) == (8, 0.5, 5, 0)
    assert args.resume and args.no_report and args.only is None and not args.restart_errored
    # Defaults add nothing; --driver-cpus 0 is not a default (the study's value is).
    plain = SweepOptions(storage=str(tmp_path / "s"), driver_cpus=0)
    assert resume_command(study, plain, ExperimentLayout.create(plain.storage, "tiny")) == (
        f"python experiments/run_grid.py --study {study.source} --storage {tmp_path / 's'} "
        "--driver-cpus 0 --resume"
    )


def test_batch_trace_is_off_by_default_and_records_each_share(tmp_path, monkeypatch):
    from raybench.engine.loaders import BatchTrace, GlobalBatchStream, StreamBatchSampler

    monkeypatch.delenv(BATCH_TRACE_ENV, raising=False)
    assert BatchTrace.from_env(0) is None  # off: no trace object, nothing done per batch
    monkeypatch.setenv(BATCH_TRACE_ENV, str(tmp_path / "trace"))
    stream = GlobalBatchStream(10, 8, seed=3)
    # Rank 1 of 2 workers, 2 micro-batches of 2 per iteration, iterations 2..3 (a resume at 2).
    sampler = StreamBatchSampler(stream, 2, 4, rank=1, world=2, accum=2, trace=BatchTrace.from_env(1))
    micro = list(sampler)
    lines = [json.loads(x) for x in (tmp_path / "trace" / "batches.rank1.jsonl").read_text().splitlines()]
    assert [x["iter"] for x in lines] == [3, 4] and {x["rank"] for x in lines} == {1}
    for k, line in enumerate(lines):
        assert line["samples"] == [i for _, i in micro[2 * k] + micro[2 * k + 1]]
        assert line["samples"] == [i for _, i in stream.batch(2 + k)[4:]]
