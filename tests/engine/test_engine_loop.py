"""Engine mechanics on a tiny registered toy task (fast): data stream, gradient accumulation,
2-worker DDP = 1 worker, exact resume, stop/NaN handling, atomic checkpoints, dataset race."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

from raybench.engine import NonFiniteLossError, World, latest_checkpoint, load_checkpoint, read_metrics, train
from raybench.engine.checkpoint import list_checkpoints, save_checkpoint
from raybench.engine.loaders import GlobalBatchStream, StreamBatchSampler, ensure_dataset
from raybench.study import load_study
from raybench.study.spec import OptimizerSpec, ScalingSpec, ScheduleSpec, SynthSpec
from raybench.tasks import DatasetMeta, Task, register_task

TIMING_KEYS = {"imgs_per_s", "checkpoint"}


class ToyDataset(Dataset):
    """12 random 4x4 'images' with a scalar target each."""

    task, num_classes, class_names = "toy", 1, ["y"]

    def __init__(self, n: int = 12, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=g)
        self.y = torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.x[i], {"y": self.y[i], "image_id": i}


class ToyNet(nn.Module):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.backbone = nn.Linear(48, 16)
        self.drop = nn.Dropout(dropout)  # draws from the global torch RNG, like RPN sampling
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.backbone(x.flatten(1))))).squeeze(1)


class ToyEvaluator:
    def __init__(self, gather: Any) -> None:
        self.gather = gather
        self.reset()

    def reset(self) -> None:
        self.rows: list[tuple[int, float, float]] = []

    def process(self, batch: Any, preds: torch.Tensor) -> None:
        for t, p in zip(batch[1], preds.tolist()):
            self.rows.append((int(t["image_id"]), p, float(t["y"])))

    def evaluate(self) -> dict[str, float]:
        rows = {r[0]: r for shard in self.gather(self.rows) for r in shard}
        mse = sum((p - y) ** 2 for _, p, y in rows.values()) / max(1, len(rows))
        return {"val/mse": mse, "val/count": float(len(rows))}


@register_task("toy_regression")
class ToyTask(Task):
    nan_at_step: int | None = None  # set by a test: make a loss term NaN at this train step

    def build_model(self, meta: DatasetMeta) -> nn.Module:
        return ToyNet(self.trial.recipe.drop_path)

    def transforms(self, split: str, generator: torch.Generator):
        if split != "train":
            return None

        def jitter(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
            noise = torch.randint(0, 8, image.shape, generator=generator, dtype=torch.uint8)
            return image + noise, target

        return jitter

    def train_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        x = torch.stack(batch[0]).float() / 255
        y = torch.stack([t["y"] for t in batch[1]])
        pred = model(x)
        self.steps = getattr(self, "steps", 0) + 1
        l1 = (pred - y).abs().mean() * 0.1
        if self.steps == ToyTask.nan_at_step:
            l1 = l1 * float("nan")
        return {"loss_mse": ((pred - y) ** 2).mean(), "loss_l1": l1}

    def predict(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return model(torch.stack(batch[0]).float() / 255)

    def build_evaluator(self, meta: DatasetMeta, gather: Any) -> ToyEvaluator:
        return ToyEvaluator(gather)


def toy_trial(repo_root: Path, **recipe_changes: Any):
    study = load_study(repo_root / "experiments" / "smoke.yaml", dry_run=True)
    base = study.trial("gdxray-resnet50_gn-supervised-full-s42")
    recipe = dataclasses.replace(
        base.recipe,
        optimizer=OptimizerSpec(name="sgd", lr=0.5, momentum=0.9, weight_decay=1e-3),
        schedule=ScheduleSpec(name="multistep", iterations=8, steps=(6,), warmup_iters=2, warmup_factor=0.1),
        batch_size=4,
        eval_period=4,
        checkpoint_period=4,
        log_period=2,
        loader_workers=0,
        drop_path=0.3,
        amp=False,
    )
    recipe = dataclasses.replace(recipe, **recipe_changes)
    dataset = dataclasses.replace(base.dataset, decoder="toy_regression", task="detection")
    return base.replace(dataset=dataset, recipe=recipe)


def toy_data() -> dict[str, Dataset]:
    return {"train": ToyDataset(12, 0), "val": ToyDataset(5, 1)}


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(latest_checkpoint(out))["model"]


def _records(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(out / "metrics.jsonl")]


def _equal_records(a: list[dict], b: list[dict]) -> bool:
    def same(x: Any, y: Any) -> bool:
        return (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)) or x == y

    return len(a) == len(b) and all(
        r.keys() == s.keys() and all(same(r[k], s[k]) for k in r) for r, s in zip(a, b)
    )


# --- the data stream --------------------------------------------------------------------------
def test_global_batches_split_into_contiguous_worker_shares():
    stream = GlobalBatchStream(num_items=10, batch_size=4, seed=42)
    b = stream.batch(2)  # positions 8..11 cross the epoch boundary (10 items)
    assert [p for p, _ in b] == [8, 9, 10, 11]
    assert [i for _, i in b[:2]] == stream.permutation(0)[8:].tolist()
    assert [i for _, i in b[2:]] == stream.permutation(1)[:2].tolist()
    assert sorted(stream.permutation(0).tolist()) == list(range(10))
    assert stream.share(2, 0, 2) + stream.share(2, 1, 2) == b
    assert stream.position(3) == (1, 2) and stream.epoch(5) == 2.0
    # 1 worker accumulating 2 micro-batches sees what 2 workers see, in the same order.
    one = list(StreamBatchSampler(stream, 0, 3, 0, 1, accum=2))
    two = [list(StreamBatchSampler(stream, 0, 3, r, 2, accum=1)) for r in range(2)]
    assert one == [m for it in range(3) for m in (two[0][it], two[1][it])]
    # Resuming at iteration 2 continues the same stream.
    assert list(StreamBatchSampler(stream, 2, 3, 0, 1, accum=2)) == one[4:]


def test_per_worker_batch_with_accumulation():
    assert ScalingSpec(workers=1).per_worker_batch(16) == (16, 1)
    assert ScalingSpec(workers=2, max_batch_per_worker=4).per_worker_batch(16) == (4, 2)


# --- gradients do not depend on the cluster shape ---------------------------------------------
def test_gradient_accumulation_matches_one_batch(repo_root, tmp_path):
    trial = toy_trial(repo_root, drop_path=0.0)
    train(trial, tmp_path / "a", datasets=toy_data(), verbose=False)
    accum = trial.replace(scaling=dataclasses.replace(trial.scaling, max_batch_per_worker=2))
    train(accum, tmp_path / "b", datasets=toy_data(), verbose=False)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)
    assert not torch.equal(a["head.weight"], ToyNet(0.0).head.weight)  # it did train


def _ddp_worker(rank: int, trial_json: str, out: str, init_file: str) -> None:
    import torch.distributed as dist

    from raybench.study import TrialSpec

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        train(TrialSpec.from_json(trial_json), out, datasets=toy_data(), verbose=False)
    finally:
        dist.destroy_process_group()


def test_two_ddp_workers_match_one_worker(repo_root, tmp_path):
    trial = toy_trial(repo_root, drop_path=0.0)
    train(trial, tmp_path / "one", datasets=toy_data(), verbose=False)
    mp.spawn(
        _ddp_worker, args=(trial.to_json(), str(tmp_path / "two"), str(tmp_path / "pg")), nprocs=2, join=True
    )
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert all(torch.allclose(one[k], two[k], atol=1e-6, rtol=1e-5) for k in one)
    r1, r2 = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert [r["iter"] for r in r1] == [r["iter"] for r in r2]
    for x, y in zip(r1, r2):
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-7), k
    assert r2[-1]["val/count"] == 5.0  # the two validation shards cover every image once
    # One checkpoint written (by rank 0), holding both workers' RNG states.
    assert len(load_checkpoint(latest_checkpoint(tmp_path / "two"))["rng"]) == 2


def test_world_must_divide_the_global_batch(repo_root, tmp_path):
    with pytest.raises(ValueError, match="does not split over 3 workers"):
        train(toy_trial(repo_root), tmp_path, datasets=toy_data(), world=World(0, 3), verbose=False)


# --- exact resume ----------------------------------------------------------------------------
class CrashAfter:
    """A reporter that 'kills the worker' once it has seen iteration ``n``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        if metrics["iter"] >= self.n:
            raise KeyboardInterrupt(f"simulated crash after iteration {metrics['iter']}")


@pytest.mark.parametrize("loader_workers", [0, 2])
def test_resume_is_exact(repo_root, tmp_path, loader_workers):
    trial = toy_trial(repo_root, loader_workers=loader_workers)  # dropout on: RNG matters
    straight = train(trial, tmp_path / "straight", datasets=toy_data(), verbose=False)
    with pytest.raises(KeyboardInterrupt):  # crash at 6, after the checkpoint at 4
        train(trial, tmp_path / "resumed", datasets=toy_data(), reporter=CrashAfter(6), verbose=False)
    assert latest_checkpoint(tmp_path / "resumed").name == "iter_0000004"
    resumed = train(trial, tmp_path / "resumed", datasets=toy_data(), resume=True, verbose=False)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight == resumed
    assert _equal_records(_records(tmp_path / "straight"), _records(tmp_path / "resumed"))
    # Resuming a finished run trains nothing and returns the same final metrics.
    assert train(trial, tmp_path / "resumed", datasets=toy_data(), verbose=False) == straight


def test_should_stop_checkpoints_and_resume_continues(repo_root, tmp_path):
    class StopAt:
        def __init__(self) -> None:
            self.seen = 0

        def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
            self.seen = int(metrics["iter"])

        def should_stop(self) -> bool:
            return self.seen >= 2

    trial = toy_trial(repo_root, sync_period=1)  # a stop is honoured at the next sync point
    straight = train(trial, tmp_path / "a", datasets=toy_data(), verbose=False)
    stopped = train(trial, tmp_path / "b", datasets=toy_data(), reporter=StopAt(), verbose=False)
    assert stopped["iter"] == 3 and latest_checkpoint(tmp_path / "b").name == "iter_0000003"
    assert train(trial, tmp_path / "b", datasets=toy_data(), verbose=False) == straight


def test_deferred_loss_readback_changes_nothing(repo_root, tmp_path):
    """Losses read back every iteration or every 3 (hot loop without host syncs): the same
    logged metrics and the same weights, bit for bit."""
    every = train(toy_trial(repo_root, sync_period=1), tmp_path / "a", datasets=toy_data(), verbose=False)
    deferred = train(toy_trial(repo_root, sync_period=3), tmp_path / "b", datasets=toy_data(), verbose=False)
    assert every == deferred
    assert _equal_records(_records(tmp_path / "a"), _records(tmp_path / "b"))
    assert len(_records(tmp_path / "a")) == 4  # log_period 2 over 8 iterations
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_refuses_another_trial(repo_root, tmp_path):
    train(toy_trial(repo_root), tmp_path, datasets=toy_data(), verbose=False)
    other = toy_trial(repo_root, batch_size=2)
    with pytest.raises(ValueError, match="different trial spec"):
        train(other, tmp_path, datasets=toy_data(), verbose=False)
    train(other, tmp_path, datasets=toy_data(), resume=False, verbose=False)  # start over is fine


def test_checkpoint_contents(repo_root, tmp_path):
    train(toy_trial(repo_root), tmp_path, datasets=toy_data(), verbose=False)
    # Only the newest two are kept; each loads with weights_only=True (load_checkpoint does).
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter_0000004", "iter_0000008"]
    state = load_checkpoint(list_checkpoints(tmp_path)[0])
    assert state["iteration"] == 4 and (state["epoch"], state["index_in_epoch"]) == (1, 4)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "meters", "trial"} <= state.keys()
    assert set(state["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    assert state["scheduler"]["last_epoch"] == 4


def test_interrupted_checkpoint_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"format": 1, "x": torch.ones(2)})

    def broken_save(obj: Any, f: Any) -> None:
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, {"format": 1, "x": torch.ones(2)})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["iter_0000001"]
    assert latest_checkpoint(tmp_path).name == "iter_0000001"


# --- precision -----------------------------------------------------------------------------
def test_evaluation_runs_in_fp32_even_with_amp_training(repo_root, tmp_path, monkeypatch):
    """AMP is for training only: evaluation (Detectron2 / Mask2Former: no autocast) runs in
    fp32. CPU bf16 autocast stands in for the GPU's: the training steps really run under it."""
    import raybench.engine.loop as loop

    seen: dict[str, list] = {"train": [], "eval": []}
    real_train_step, real_predict = ToyTask.train_step, ToyTask.predict

    def train_step(self, model, batch):
        seen["train"].append((torch.is_autocast_enabled("cpu"), model.backbone(torch.zeros(1, 48)).dtype))
        return real_train_step(self, model, batch)

    def predict(self, model, batch):
        out = real_predict(self, model, batch)
        seen["eval"].append((torch.is_autocast_enabled("cpu"), out.dtype))
        return out

    monkeypatch.setattr(ToyTask, "train_step", train_step)
    monkeypatch.setattr(ToyTask, "predict", predict)
    monkeypatch.setattr(loop, "training_amp_dtype", lambda amp, device: torch.bfloat16 if amp else None)
    train(toy_trial(repo_root, amp=True), tmp_path / "amp", datasets=toy_data(), verbose=False)
    assert seen["train"] and set(seen["train"]) == {(True, torch.bfloat16)}
    assert seen["eval"] and set(seen["eval"]) == {(False, torch.float32)}

    # Called from inside an autocast region, evaluate() still switches it off.
    task = ToyTask(toy_trial(repo_root))
    model = ToyNet(0.0)
    loader = torch.utils.data.DataLoader(ToyDataset(3, 1), batch_size=3, collate_fn=task.collate)
    seen["eval"].clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        metrics = loop.evaluate(
            task, model, loader, DatasetMeta("toy", 1, ("y",)), device=torch.device("cpu")
        )
    assert seen["eval"] == [(False, torch.float32)] and metrics["val/count"] == 3.0
    monkeypatch.undo()
    assert loop.training_amp_dtype(True, torch.device("cpu")) is None  # no CPU autocast for real


# --- failures --------------------------------------------------------------------------------
def test_non_finite_loss_names_iteration_and_term(repo_root, tmp_path, monkeypatch):
    monkeypatch.setattr(ToyTask, "nan_at_step", 3)
    with pytest.raises(NonFiniteLossError, match=r"iteration 3: loss_l1 = nan") as info:
        train(toy_trial(repo_root), tmp_path, datasets=toy_data(), verbose=False)
    assert info.value.iteration == 3 and info.value.term == "loss_l1"


def test_non_finite_loss_found_exactly_when_read_back_late(repo_root, tmp_path, monkeypatch):
    """Losses read back only every 8 iterations: the error still names iteration 3, and no
    checkpoint is written after the NaN (the checkpoint at 4 waits for the read-back)."""
    monkeypatch.setattr(ToyTask, "nan_at_step", 3)
    trial = toy_trial(repo_root, sync_period=8, log_period=8, eval_period=8)
    with pytest.raises(NonFiniteLossError, match=r"iteration 3: loss_l1 = nan"):
        train(trial, tmp_path, datasets=toy_data(), verbose=False)
    assert latest_checkpoint(tmp_path) is None


def test_synthetic_root_written_once_under_a_race(repo_root, tmp_path):
    study = load_study(repo_root / "experiments" / "smoke.yaml", dry_run=True)
    spec = dataclasses.replace(
        study.trial("gdxray-resnet50_gn-supervised-full-s42").dataset,
        root=str(tmp_path / "gdxray"),
        synthetic=SynthSpec(images=4, size=32),
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            ensure_dataset(spec)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [p.name for p in tmp_path.iterdir()] == ["gdxray"]  # no temporary folder left
    assert (tmp_path / "gdxray" / "Castings").is_dir()


def test_stale_synthetic_data_is_replaced_and_user_data_never_touched(repo_root, tmp_path):
    """A synthetic root written with other parameters (an older study) is rewritten, not
    silently trained on; a root without the synth marker (real data) is left alone."""
    from raybench.data.synth import MARKER

    study = load_study(repo_root / "experiments" / "smoke.yaml", dry_run=True)
    base = study.trial("gdxray-resnet50_gn-supervised-full-s42").dataset
    old = dataclasses.replace(base, root=str(tmp_path / "gdxray"), synthetic=SynthSpec(images=4, size=32))
    root = ensure_dataset(old)
    first = json.loads((root / MARKER).read_text())
    assert first["images"] == 4 and "object_scale" not in first
    stamp = (root / MARKER).stat().st_mtime_ns
    ensure_dataset(old)  # same parameters: kept as is
    assert (root / MARKER).stat().st_mtime_ns == stamp
    new = dataclasses.replace(old, synthetic=SynthSpec(images=6, size=32, object_scale=2.0))
    ensure_dataset(new)
    second = json.loads((root / MARKER).read_text())
    assert second["images"] == 6 and second["object_scale"] == 2.0
    assert len(list((root / "Castings").rglob("*.png"))) == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".gdxray.")]  # no leftovers
    user = tmp_path / "user"
    (user / "Castings").mkdir(parents=True)
    (user / "Castings" / "keep.txt").write_text("mine")
    ensure_dataset(dataclasses.replace(new, root=str(user)))
    assert [p.name for p in user.rglob("*") if p.is_file()] == ["keep.txt"]
