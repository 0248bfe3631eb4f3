"""Weights & Biases tracking: one run per trial, logged from world rank 0 only; never the
reason a trial fails (see :mod:`raybench.tracking.wandb_run`)."""

from raybench.tracking.wandb_run import WandbTracker, find_offline_runs, read_offline_run, run_id, wandb_mode

__all__ = ["WandbTracker", "find_offline_runs", "read_offline_run", "run_id", "wandb_mode"]
