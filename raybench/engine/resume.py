"""Exact resume: what a checkpoint of a run holds, and how a run continues from one.

Writing (:func:`save_run_checkpoint`) and reading (:func:`find_resume_state`,
:func:`restore_run`) are side by side so that what is saved and what is restored can be
compared at a glance. The file format (atomic writes, ``weights_only`` loads, RNG states as
plain data) is :mod:`raybench.engine.checkpoint`'s.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from raybench.engine.checkpoint import (
    FORMAT,
    capture_rng,
    derived_seed,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    seed_everything,
)
from raybench.engine.distributed import gather_objects
from raybench.engine.run import Run
from raybench.errors import ResumeMismatchError
from raybench.study.spec import TrialSpec

#: Checkpoints kept on disk (the newest ones); Ray keeps its own copies.
KEEP_CHECKPOINTS = 2


def _comparable(trial_json: str) -> dict[str, Any]:
    """The spec minus what may change on a resume without changing the trial (resources, data location)."""
    d = json.loads(trial_json)
    d.pop("scaling", None)
    d.get("dataset", {}).pop("root", None)
    return d


def find_resume_state(
    trial: TrialSpec, out_dir: Path, *, resume: bool, resume_from: str | Path | None
) -> tuple[Path | None, dict[str, Any] | None]:
    """(checkpoint folder, its state) to continue from: ``resume_from``, else with ``resume``
    the newest checkpoint in ``out_dir``; (None, None) for a fresh start. A checkpoint written
    by another trial spec is refused."""
    path = Path(resume_from) if resume_from else (latest_checkpoint(out_dir) if resume else None)
    state = load_checkpoint(path) if path else None
    if state is not None and _comparable(state["trial"]) != _comparable(trial.to_json()):
        raise ResumeMismatchError(
            f"checkpoint {path} was written by a different trial spec "
            f"({state.get('trial_name')!r}); refusing to resume {trial.name!r} from it "
            "(use another output folder: `raybench train --out`, `raybench run --experiment`; "
            "or start over: drop --resume, resume=False in Python)"
        )
    return path, state


def restore_run(run: Run, state: dict[str, Any] | None, path: Path | None) -> None:
    """Load ``state`` into the freshly built run: weights, optimizer, LR schedule, loss scaler,
    the partial logging window, the last metrics and every RNG (after the model was built, so
    the initialisation's draws do not matter). A different worker count keeps all of that but
    the per-worker random streams, which are re-seeded. Without a state, workers other than
    rank 0 leave the common seed for their own stream (e.g. RPN sampling)."""
    trial, world = run.trial, run.world
    if state is None:
        if world.rank > 0:
            seed_everything(derived_seed(trial.seed, world.rank))
        return
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.losses.meters.load(state["meters"])
    run.start = run.done = int(state["iteration"])
    run.last_train, run.last_val = dict(state["train_metrics"]), dict(state["val_metrics"])
    rngs = state["rng"]
    if len(rngs) == world.size:
        restore_rng(rngs[world.rank])
    else:
        warnings.warn(
            f"{trial.name}: checkpoint from {len(rngs)} worker(s) resumed on {world.size}: "
            "data order and weights carry over exactly, per-worker random streams are re-seeded",
            stacklevel=3,
        )
        seed_everything(derived_seed(trial.seed, world.rank, run.start))
    run.progress(f"resuming from {path} at iteration {run.start}")


def save_run_checkpoint(run: Run) -> Path | None:
    """Checkpoint iteration ``run.done`` (every worker's RNG gathered; rank 0 writes, the two
    newest are kept); returns the folder on rank 0, None elsewhere."""
    rng_states = gather_objects(capture_rng())
    if not run.world.is_main:
        return None
    trial, done = run.trial, run.done
    epoch, index = run.stream.position(done)
    state = {
        "format": FORMAT,
        "trial": trial.to_json(),
        "trial_name": trial.name,
        "iteration": done,
        "epoch": epoch,
        "index_in_epoch": index,
        "world_size": run.world.size,
        # a micro-batch the OOM fallback chose, reused on resume (None: as configured)
        "oom_micro_batch": run.micro if run.micro < run.planned_micro else None,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "rng": rng_states,
        "meters": run.losses.meters.state(),
        "train_metrics": run.last_train,
        "val_metrics": run.last_val,
    }
    return save_checkpoint(run.out_dir, done, state, keep=KEEP_CHECKPOINTS)
