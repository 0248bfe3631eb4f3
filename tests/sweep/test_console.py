"""The sweep's console: the trial events and status table (unit), the verbosity flags, and the
main job's console without Ray's internal noise (one 2-trial run of the smoke study)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from raybench.sweep import console
from raybench.sweep.cli import add_sweep_arguments, verbosity
from tests.helpers.sweep import REPO, tiny_study

T1, T2 = "gdxray-a-frozen-s42", "gdxray-a-full-s42"
#: Lines of Ray's own that reached the main job's console before issue 13 (none actionable).
RAY_NOISE = (
    "PlacementGroupCleaner",
    "Failed to query Ray Train Controller",
    "core_worker.cc",
    "Reporting training result",
    "worker processes have been started on node",
)


def _trial(name: str, status: str = "RUNNING") -> SimpleNamespace:
    return SimpleNamespace(config={"trial": name}, status=status, error_file="/x/error.txt")


def _events(verbosity_level: int, statuses: dict) -> tuple:
    from raybench.sweep.events import TrialEvents

    run = console.activate(
        metric={T1: "val/box_AP50", T2: "val/box_AP50"},
        iterations={T1: 6, T2: 6},
        status_of=statuses.get,
        verbosity=verbosity_level,
    )
    return TrialEvents(), run


def _drive(events, t1, t2) -> None:
    events.on_trial_start(iteration=1, trials=[t1, t2], trial=t1)
    events.on_trial_result(iteration=2, trials=[t1, t2], trial=t1, result={"iter": 2, "train/loss": 1.0})
    events.on_trial_result(
        iteration=3,
        trials=[t1, t2],
        trial=t1,
        result={"iter": 3, "val/box_AP50": 12.5, "checkpoint_path": "/c"},
    )
    events.on_trial_result(iteration=4, trials=[t1, t2], trial=t2, result={"iter": 5, "resumed_from": 4.0})
    events.on_trial_complete(iteration=5, trials=[t1, t2], trial=t1)
    events.on_trial_error(iteration=6, trials=[t1, t2], trial=t2)


def test_trial_events_one_line_each(capsys):
    statuses = {
        T1: {"state": "finished", "final": {"val/box_AP50": 13.25}},
        T2: {
            "state": "failed",
            "message": "NonFiniteLossError: non-finite loss at iteration 5: loss_classifier = nan",
        },
    }
    events, run = _events(console.DEFAULT, statuses)
    with console.console_output(console.DEFAULT), run:
        _drive(events, _trial(T1), _trial(T2))
        events.on_experiment_end(trials=[_trial(T1, "TERMINATED"), _trial(T2, "ERROR")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[:7] == [
        f"[raybench] {T1}: started",
        f"[raybench] {T1}: evaluated at iteration 3/6: val/box_AP50 = 12.5",
        f"[raybench] {T1}: checkpoint at iteration 3/6",
        f"[raybench] {T2}: resumed from the checkpoint of iteration 4",
        f"[raybench] {T1}: finished (val/box_AP50 = 13.25)",
        f"[raybench] {T2}: failed: NonFiniteLossError: non-finite loss at iteration 5: loss_classifier = nan",
        "[raybench] trial status: 1 ERROR | 1 TERMINATED (0 min 00 s)",
    ]
    table = lines[7:]
    assert table[0].split() == ["trial", "status", "iter", "headline", "metric"]
    assert table[1].split() == [T1, "TERMINATED", "3/6", "val/box_AP50", "=", "12.5"]
    assert table[2].split() == [T2, "ERROR", "5/6", "-"]
    # Outside a run (e.g. a callback restored from an old experiment, unpickled elsewhere): silent.
    _drive(events, _trial(T1), _trial(T2))
    assert capsys.readouterr().out == ""


def test_quiet_keeps_failures_and_the_summary_only(capsys):
    events, run = _events(console.QUIET, {T2: {"state": "failed", "message": "ValueError: bad"}})
    with console.console_output(console.QUIET), run:
        _drive(events, _trial(T1), _trial(T2))
        events.on_experiment_end(trials=[_trial(T1, "TERMINATED")])
        console.log.info("experiment x: 2 trials")
        console.log.info("resume with: python ...", extra={"always": True})
    assert capsys.readouterr().out.splitlines() == [
        f"[raybench] {T2}: failed: ValueError: bad",
        "[raybench] resume with: python ...",
    ]


def test_failure_without_a_status_names_the_error_file(capsys):
    events, run = _events(console.DEFAULT, {})
    with console.console_output(console.DEFAULT), run:
        events.on_trial_recover(iteration=1, trials=[], trial=_trial(T1))
    assert capsys.readouterr().out == f"[raybench] {T1}: failed, Tune retries it: see /x/error.txt\n"


def test_verbosity_flags():
    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    assert verbosity(parser.parse_args([])) == console.DEFAULT
    assert verbosity(parser.parse_args(["-q"])) == console.QUIET
    assert verbosity(parser.parse_args(["--verbose"])) == console.VERBOSE
    with pytest.raises(SystemExit):
        parser.parse_args(["-q", "--verbose"])
    assert console.ray_init_kwargs(console.DEFAULT) == {"log_to_driver": False}
    assert console.ray_init_kwargs(console.VERBOSE) == {"log_to_driver": True}
    assert (console.tune_verbose(console.DEFAULT), console.tune_verbose(console.VERBOSE)) == (0, 1)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("level", [console.DEFAULT, console.VERBOSE])
def test_rays_worker_pool_warning_is_dropped_below_verbose(level, capsys):
    """The raylet's worker-pool size warning reaches the driver through Ray's error channel,
    which ``log_to_driver=False`` does not silence: dropped below ``--verbose``, every other
    driver message kept, Ray's printer restored afterwards."""
    import ray._private.worker as worker

    original = worker.print_to_stdstream
    pool = (
        f"WARNING: 8 PYTHON worker processes have been started on node: {level}abc with address: "
        "127.0.0.1. This could be a result of using a large number of actors."
    )
    oom = f"Task was killed due to the node running low on memory ({level})."
    with console.ray_driver_messages(level):
        message = {"lines": [pool, oom], "pid": "raylet", "is_err": False}
        worker.print_to_stdstream(message, ignore_prefix=False)
    assert worker.print_to_stdstream is original
    out = capsys.readouterr().out
    assert oom in out
    assert (pool in out) == (level >= console.VERBOSE), out


def test_main_job_console_has_no_ray_noise(tmp_path):
    """``experiments/run_grid.py --only ...`` on two trials of (a short copy of) the smoke study,
    in a subprocess with its own local Ray (own RAY_TMPDIR: it neither joins nor disturbs the
    test session's Ray)."""
    study = tiny_study(tmp_path, iterations=4, checkpoint_period=2, eval_period=2)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rbc", dir="/tmp"))  # short: Ray's socket paths
    cmd = [sys.executable, str(REPO / "experiments" / "run_grid.py"), "--study", str(study)]
    cmd += ["--only", "gdxray-convnext_t-supervised-*", "--storage", str(tmp_path / "store")]
    cmd += ["--num-cpus", "2", "--driver-cpus", "0", "--no-report"]
    env = os.environ | {"WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_DEDUP_LOGS", None)  # as a user runs it
    try:
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=880)
        out = proc.stdout + proc.stderr
        (tmp_path / "console.txt").write_text(out)
        assert proc.returncode == 0, out[-4000:]
        for noise in RAY_NOISE:
            assert noise not in out, noise
        assert "Configuration for experiment" not in out  # Tune's own boxes: --verbose only
        # The status table and every trial's events.
        assert "[raybench] trial status: 2 TERMINATED" in out, out[-4000:]
        for regime in ("frozen", "full"):
            name = f"gdxray-convnext_t-supervised-{regime}-s42"
            assert f"[raybench] {name}: started\n" in out, out[-4000:]
            assert f"[raybench] {name}: evaluated at iteration 2/4: val/box_AP50 = " in out, out[-4000:]
            assert f"[raybench] {name}: evaluated at iteration 4/4: val/box_AP50 = " in out
            assert f"[raybench] {name}: checkpoint at iteration 4/4\n" in out
            assert f"[raybench] {name}: finished (val/box_AP50 = " in out
        assert "[raybench] done: 2 finished, 0 failed" in out
        # The rest is in the log files named on the console (the Train reports among them).
        line = next(x for x in out.splitlines() if "log files in " in x)
        logs = Path(line.split("log files in ", 1)[1].split(" ")[0])
        assert logs.is_dir() and str(logs).startswith(str(ray_tmp))
        texts = [p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file() and p.stat().st_size]
        assert any("Reporting training result" in t for t in texts)
        assert any("[gdxray-convnext_t-supervised-full-s42] iter" in t for t in texts)  # the engine's lines
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
