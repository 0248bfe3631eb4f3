"""The batch fits the GPU it gets: an out-of-memory error in an early iteration halves the
micro-batch (doubling accumulation) and repeats the iteration, and the run ends exactly where
a run configured with that micro-batch from the start ends. CPU: the OOM is injected from the
model's forward (a pre-hook raising ``torch.cuda.OutOfMemoryError`` above a batch size)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from raybench.engine import latest_checkpoint, load_checkpoint, train
from tests.engine.test_engine_loop import (
    CrashAfter,
    ToyTask,
    _equal_records,
    _records,
    _weights,
    toy_data,
    toy_trial,
)


def _scaled(trial: Any, cap: int | str | None) -> Any:
    return trial.replace(scaling=dataclasses.replace(trial.scaling, max_batch_per_worker=cap))


class FitsOnly:
    """Builds the toy model with a forward pre-hook that raises CUDA's out-of-memory error when
    a training batch holds more than ``limit`` images (and counts the raises)."""

    def __init__(self, limit: int, ranks: tuple[int, ...] | None = None) -> None:
        self.limit, self.ranks, self.raised = limit, ranks, 0
        self.original = ToyTask.build_model

    def build_model(self, task: ToyTask, meta: Any) -> torch.nn.Module:
        model = self.original(task, meta)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0

        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if (
                module.training
                and args[0].shape[0] > self.limit
                and (self.ranks is None or rank in self.ranks)
            ):
                self.raised += 1
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate 2.00 GiB (batch of {args[0].shape[0]})"
                )

        model.register_forward_pre_hook(hook)
        return model


class Recorder:
    def __init__(self) -> None:
        self.choices: list[dict] = []

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        pass

    def batch_choice(self, info: dict) -> None:
        self.choices.append(info)


def test_oom_halves_the_micro_batch_and_matches_a_run_configured_so(repo_root, tmp_path, monkeypatch, capsys):
    trial = toy_trial(repo_root)  # dropout on: the repeated iteration must restore the RNG
    reference = train(_scaled(trial, 1), tmp_path / "ref", datasets=toy_data(), verbose=False)

    fits = FitsOnly(limit=1)
    monkeypatch.setattr(ToyTask, "build_model", lambda task, meta: fits.build_model(task, meta))
    recorder = Recorder()
    got = train(_scaled(trial, "auto"), tmp_path / "auto", datasets=toy_data(), reporter=recorder)
    assert fits.raised == 2  # 4 -> 2 -> 1, both at iteration 1
    assert got == reference
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "auto")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _equal_records(_records(tmp_path / "ref"), _records(tmp_path / "auto"))
    # The choice is printed, told to the reporter, and kept in the checkpoint for a resume.
    out = capsys.readouterr().out
    assert "out of memory at iteration 1 (this worker) with micro-batch 4: micro-batch 2 x 2" in out
    assert "with micro-batch 2: micro-batch 1 x 4 accumulation steps" in out
    assert [(c["micro_batch"], c["accum"], c["configured_micro_batch"]) for c in recorder.choices] == [
        (2, 2, 4),
        (1, 4, 4),
    ]
    assert load_checkpoint(latest_checkpoint(tmp_path / "auto"))["oom_micro_batch"] == 1


def test_resume_reuses_the_chosen_micro_batch(repo_root, tmp_path, monkeypatch):
    trial = toy_trial(repo_root)
    reference = train(_scaled(trial, 2), tmp_path / "ref", datasets=toy_data(), verbose=False)
    fits = FitsOnly(limit=2)
    monkeypatch.setattr(ToyTask, "build_model", lambda task, meta: fits.build_model(task, meta))
    auto = _scaled(trial, "auto")
    with pytest.raises(KeyboardInterrupt):  # crash at 6, after the checkpoint at 4
        train(auto, tmp_path / "auto", datasets=toy_data(), reporter=CrashAfter(6), verbose=False)
    assert fits.raised == 1
    recorder = Recorder()
    resumed = train(auto, tmp_path / "auto", datasets=toy_data(), reporter=recorder, verbose=False)
    assert fits.raised == 1  # no second out-of-memory error to find the micro-batch again
    assert recorder.choices[0]["micro_batch"] == 2 and "resume" in recorder.choices[0]["reason"]
    assert resumed == reference
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "auto")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_oom_at_one_image_is_a_clear_error(repo_root, tmp_path, monkeypatch):
    fits = FitsOnly(limit=0)
    monkeypatch.setattr(ToyTask, "build_model", lambda task, meta: fits.build_model(task, meta))
    with pytest.raises(torch.OutOfMemoryError, match="micro-batch of 1 image .*nothing left to halve"):
        train(_scaled(toy_trial(repo_root), "auto"), tmp_path, datasets=toy_data(), verbose=False)


def test_without_auto_cpu_runs_do_not_catch_oom(repo_root, tmp_path, monkeypatch):
    fits = FitsOnly(limit=2)
    monkeypatch.setattr(ToyTask, "build_model", lambda task, meta: fits.build_model(task, meta))
    with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate"):
        train(toy_trial(repo_root), tmp_path, datasets=toy_data(), verbose=False)
    assert fits.raised == 1


def _ddp_worker(rank: int, trial_json: str, out: str, init_file: str, limit: int | None) -> None:
    import torch.distributed as dist

    from raybench.study import TrialSpec

    torch.set_num_threads(1)
    if limit is not None:  # only rank 1 runs out of memory: both workers must halve together
        fits = FitsOnly(limit=limit, ranks=(1,))
        ToyTask.build_model = lambda task, meta: fits.build_model(task, meta)  # type: ignore[method-assign]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        train(TrialSpec.from_json(trial_json), out, datasets=toy_data(), verbose=False)
    finally:
        dist.destroy_process_group()


def test_ddp_workers_agree_on_the_fallback(repo_root, tmp_path):
    """Rank 1 alone runs out of memory: both workers halve together (no one waits in a
    collective), and the run equals one worker's (2 workers = 1 worker, test_engine_loop)."""
    trial = toy_trial(repo_root, drop_path=0.0)
    train(_scaled(trial, 1), tmp_path / "ref", datasets=toy_data(), verbose=False)
    auto = _scaled(trial, "auto")
    mp.spawn(
        _ddp_worker,
        args=(auto.to_json(), str(tmp_path / "auto"), str(tmp_path / "pg"), 1),
        nprocs=2,
        join=True,
    )
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "auto")
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)
    assert load_checkpoint(latest_checkpoint(tmp_path / "auto"))["oom_micro_batch"] == 1
    ra, rb = _records(tmp_path / "ref"), _records(tmp_path / "auto")
    assert [r["iter"] for r in ra] == [r["iter"] for r in rb]
    for x, y in zip(ra, rb):
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-7), k


def test_the_choice_is_recorded_in_status_and_wandb_config(repo_root, tmp_path, monkeypatch):
    """What the Ray reporter does with the engine's choice (rank 0): status.json and W&B config."""
    import json

    from raybench.results.store import write_status
    from raybench.sweep.layout import ExperimentLayout
    from raybench.sweep.trainable import RayReporter
    from raybench.tracking import find_offline_runs, read_offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    trial = toy_trial(repo_root)
    layout = ExperimentLayout.create(str(tmp_path / "store"), "exp")
    reporter = RayReporter(trial, layout, rank=0)
    write_status(layout.trial_dir(trial.name), "running", extra={"metric": "val/mse"})
    info = {
        "micro_batch": 2,
        "accum": 2,
        "configured_micro_batch": 4,
        "reason": "out of memory at iteration 1",
    }
    reporter.batch_choice(info)
    reporter.close(ok=True)
    status = json.loads((Path(layout.trial_dir(trial.name)) / "status.json").read_text())
    assert status["batch"] == info and status["attempts"] == 1 and status["metric"] == "val/mse"
    assert reporter.status_extra() == {"batch": info}
    (run,) = find_offline_runs(layout.wandb_dir(trial.name))
    assert read_offline_run(run, wait_s=30)["config"]["batch"] == info
