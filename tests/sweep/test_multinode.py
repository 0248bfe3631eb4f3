"""Multi-node for real, on one machine: a node lost mid-trial (ray.cluster_utils.Cluster), and
an autoscaler that starts from zero nodes (the fake_multinode provider). A custom resource,
``fake_gpu``, stands in for a GPU: the study asks for it with ``scaling.resources_per_worker``.

The drills run in their own process with their own Ray (tests/helpers/multinode.py), never
in the session's shared Ray; storage is one shared folder, as a cluster's shared filesystem.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from raybench.study import StudyError, load_study
from raybench.sweep.runner import max_concurrency
from tests.helpers.multinode import descendants
from tests.helpers.sweep import tiny_study

HELPER = Path(__file__).resolve().parents[1] / "helpers" / "multinode.py"


def _study(tmp: Path, name: str, *, long_iterations: int | None = 12, **scaling) -> Path:
    """A tiny GDXray study asking for ``fake_gpu``; with ``long_iterations`` a second dataset
    (the same data, a longer schedule) makes a second trial that outlasts the first."""
    path = tiny_study(tmp, iterations=4, checkpoint_period=2, eval_period=4, regimes=("full",), name=name)
    study = yaml.safe_load(path.read_text())
    study["scaling"].update({"resources_per_worker": {"fake_gpu": 1}} | scaling)
    if long_iterations:
        long = copy.deepcopy(study["datasets"][0])
        long["id"] = "gdxraylong"
        long["overrides"]["schedule"] = {"length": "6x", "iterations": long_iterations}
        long["overrides"]["eval_period"] = long_iterations // 2
        study["datasets"].append(long)
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _drill(kind: str, study: Path, storage: Path, name: str, timeout: float) -> dict:
    out = storage.parent / f"{kind}.json"
    cmd = [sys.executable, str(HELPER), kind, "--study", str(study), "--storage", str(storage)]
    proc = subprocess.Popen(
        [*cmd, "--experiment", name, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # End the drill and every process it started (its Ray nodes), nothing else.
        for pid in [proc.pid, *descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        stderr += f"\n[test] the drill ran past {timeout:g} s and was killed"
    report = json.loads(out.read_text()) if out.is_file() else {}
    log = Path(report["log"]).read_text() if report.get("log") and Path(report["log"]).is_file() else ""
    assert proc.returncode == 0 and "error" not in report, (
        f"{kind} drill failed: {report.get('error')}\n--- drill stderr ---\n{stderr[-4000:]}\n"
        f"--- run_grid.py ---\n{log[-6000:]}"
    )
    report["log_text"] = log
    return report


# ---- the study key ----


def test_resources_per_worker_is_a_validated_study_key(tmp_path):
    study = load_study(_study(tmp_path, "keys", long_iterations=None))
    assert study.trials[0].scaling.resources_per_worker == {"fake_gpu": 1.0}
    # a TrialSpec round-trips through JSON (how it reaches the Ray workers)
    trial = study.trials[0]
    assert type(trial).from_json(trial.to_json()).scaling.resources_per_worker == {"fake_gpu": 1.0}
    for bad, message in (
        ({"GPU": 1}, "resources_per_worker.GPU: set scaling.gpus_per_worker instead"),
        ({"CPU": 2}, "resources_per_worker.CPU: set scaling.cpus_per_worker instead"),
        ({"fake_gpu": 0}, "resources_per_worker.fake_gpu: expected a number > 0, got 0"),
        ({"fake_gpu": "one"}, "scaling.resources_per_worker.fake_gpu: expected a number, got 'one'"),
    ):
        path = _study(tmp_path / str(len(message)), "bad", long_iterations=None, resources_per_worker=bad)
        with pytest.raises(StudyError) as err:
            load_study(path)
        assert message in str(err.value), str(err.value)
        assert "bad.yaml" in str(err.value)  # the file is named


def test_concurrency_counts_resources_per_worker_like_gpus(tmp_path):
    trials = list(load_study(_study(tmp_path, "conc", long_iterations=None)).trials) * 4
    # A joined cluster without the resource yet (autoscaling from zero): no cap.
    cap, why = max_concurrency(trials, 1.0, None, "joined", {"CPU": 8.0})
    assert cap is None and why.startswith("joined cluster with no fake_gpu yet: no cap")
    # Two nodes carry it: two trials at once, even with CPUs for four.
    cap, why = max_concurrency(trials, 1.0, None, "joined", {"CPU": 8.0, "fake_gpu": 2.0})
    assert cap == 2 and "each trial takes 2 CPUs + 1 fake_gpu" in why
    # A local Ray without it: one trial (it waits), and the reason says so.
    cap, why = max_concurrency(trials, 1.0, None, "local", {"CPU": 8.0})
    assert cap == 1 and "not even one trial fits" in why


def test_trial_drivers_are_pinned_to_the_head_node_and_counted_there(tmp_path, monkeypatch, caplog):
    import ray

    from raybench.sweep.placement import HEAD_RESOURCE, driver_resources

    def nodes(head_cpus: float) -> list[dict]:
        head = {"CPU": head_cpus, HEAD_RESOURCE: 1.0, "node:127.0.0.1": 1.0}
        return [
            {"Alive": True, "Resources": {"CPU": 16.0, "fake_gpu": 1.0}},
            {"Alive": False, "Resources": {"CPU": 64.0, HEAD_RESOURCE: 1.0}},  # a head that is gone
            {"Alive": True, "Resources": head},
        ]

    monkeypatch.setattr(ray, "nodes", lambda: nodes(8.0))
    assert driver_resources(1.0) == ({"CPU": 1.0, HEAD_RESOURCE: 0.001}, 8.0)
    assert driver_resources(0.0) == ({"CPU": 0.0, HEAD_RESOURCE: 0.001}, 8.0)  # toy runs: no CPU
    # A head without CPUs for a driver (`ray start --head --num-cpus=0`): not pinned, and said so.
    monkeypatch.setattr(ray, "nodes", lambda: nodes(0.0))
    with caplog.at_level("WARNING", logger="raybench.sweep.placement"):
        assert driver_resources(1.0) == ({"CPU": 1.0}, None)
    assert (
        "the head node has 0 CPUs, a trial driver needs 1: trial drivers may run on worker nodes"
        in caplog.text
    )

    trials = list(load_study(_study(tmp_path, "head", long_iterations=None)).trials) * 4
    # Four fake_gpu nodes are up, but only two drivers fit on a 2-CPU head.
    cap, why = max_concurrency(trials, 1.0, None, "joined", {"CPU": 34.0, "fake_gpu": 4.0}, head_cpus=2.0)
    assert cap == 2 and why.endswith("; trial drivers run on the head node: 2 fit in its 2 CPUs"), why
    # Autoscaling from zero: as many trials as the head has room for drivers ...
    cap, why = max_concurrency(trials, 1.0, None, "joined", {"CPU": 2.0}, head_cpus=2.0)
    assert (cap, why) == (
        2,
        "joined cluster with no fake_gpu yet: trial drivers run on the head node: 2 fit in its 2 CPUs",
    )
    # ... and no cap when all of them fit there.
    assert max_concurrency(trials, 0.5, None, "joined", {"CPU": 4.0}, head_cpus=4.0)[0] is None
    # A local Ray is its own head: the CPUs count as before.
    assert max_concurrency(trials, 1.0, None, "local", {"CPU": 4.0, "fake_gpu": 4.0}, head_cpus=4.0)[0] == 2


# ---- node loss ----


@pytest.mark.timeout(900)
def test_node_loss_resumes_the_trial_on_the_other_node(tmp_path):
    """Head + two worker nodes (one fake_gpu each). The short trial finishes; the node running
    the long trial's worker is removed hard; the long trial resumes on the other node from its
    last checkpoint, the grid completes, the finished trial is not trained again, and the final
    metrics equal an uninterrupted run of the same trial. The trial drivers, Train's controllers
    and its autoscaling coordinator ran on the head, so the lost node took only a train worker
    (unpinned, it could take them too, and the trial stalled or needed a Tune retry:
    raybench.sweep.placement)."""
    from raybench.engine import train

    path = _study(tmp_path, "nodeloss")
    storage = tmp_path / "shared"
    report = _drill("node-loss", path, storage, "nodeloss", timeout=800)
    root = storage / "nodeloss"
    study = load_study(path)
    short, long = (t.name for t in study.trials)

    # Both trials ran at once, one per fake_gpu node (the concurrency counts the resource).
    assert (
        "[raybench] concurrency: 2 -- joined cluster, as it is now (8 CPUs, 0 GPUs), each trial "
        "takes 2 CPUs + 1 fake_gpu" in report["log_text"]
    )
    assert report["grid_rc"] == 0
    assert (report["finished_first"], report["victim"]) == (short, long)
    lost = report["victim_node"]
    assert lost in ("worker1", "worker2")
    assert report["resumed_on"] == [{"worker1": "worker2", "worker2": "worker1"}[lost]]
    # Where each process ran before the loss (by process title): Tune's trial drivers
    # (ImplicitFunc), Train's controllers and its coordinator on the head, the worker on the lost node.
    actors = report["actors_before_loss"]
    for control in ("ImplicitFunc", "TrainController", "_AutoscalingCoordinatorActor"):
        assert actors.get(control) == ["head"], (control, actors)
    assert actors["RayTrainWorker"] == [lost], actors

    # The long trial resumed from a checkpoint persisted before the loss, not from scratch.
    resumes = [json.loads(x) for x in (root / "trials" / long / "resumes.jsonl").read_text().splitlines()]
    assert len(resumes) == 1
    assert resumes[0]["from_iter"] in range(2, 12, 2)  # a checkpoint (every 2 iterations), not 0 or 12
    status = {t: json.loads((root / "trials" / t / "status.json").read_text()) for t in (short, long)}
    assert all(s["state"] == "finished" for s in status.values())
    assert status[long]["attempts"] == 2 and status[long]["final"]["iter"] == 12

    # The finished trial was not trained again: its record is the one written before the loss.
    assert status[short] == report["finished_status_before_loss"]
    assert status[short]["updated"] < report["node_loss_time"] and status[short]["attempts"] == 1
    assert not (root / "trials" / short / "resumes.jsonl").exists()

    # The same trial without Ray and without interruption (1 thread, like the Ray worker).
    trial = next(t for t in study.trials if t.name == long)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        straight = train(trial, tmp_path / "straight", verbose=False)
    finally:
        torch.set_num_threads(threads)
    for key in ("train/loss", "train/loss_classifier", "val/box_AP", "val/box_AP50"):
        assert status[long]["final"][key] == pytest.approx(straight[key], abs=1e-6), key


# ---- autoscaling from zero ----


@pytest.mark.timeout(900)
def test_autoscaling_from_zero_adds_nodes_for_pending_trials_and_removes_idle_ones(tmp_path):
    """A CPU head and one autoscaling worker type (fake_gpu: 1, min 0) of the fake_multinode
    provider: no node can run a trial at first; run_grid.py joins through RAY_ADDRESS with no
    concurrency cap, the trials pend, the autoscaler adds nodes, the grid completes, and the
    idle nodes are removed."""
    path = _study(tmp_path, "autoscale", long_iterations=6)
    storage = tmp_path / "shared"
    report = _drill("autoscale", path, storage, "autoscale", timeout=800)
    assert report["workers_at_start"] == 0  # autoscaling from zero
    assert "[raybench] concurrency: no cap -- joined cluster with no fake_gpu yet" in report["log_text"]
    assert report["grid_rc"] == 0
    assert 1 <= report["nodes_added"] <= 2  # the node type's max_workers
    assert report["first_node_added_s"] is not None
    # the nodes are the autoscaling type's: the GPU stand-in and the CPUs the config gives them
    assert all(r == [["CPU", 2.0], ["fake_gpu", 1.0]] for r in report["added_node_resources"])
    study = load_study(path)
    for trial in study.trials:
        status = json.loads((storage / "autoscale" / "trials" / trial.name / "status.json").read_text())
        assert status["state"] == "finished" and status["final"]["iter"] == trial.recipe.schedule.iterations
    assert report["idle_removed_s"] is not None, report.get("idle_error")
    assert report["workers_at_end"] == 0
