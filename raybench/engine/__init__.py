"""The training engine: one iteration loop for every task, with or without Ray.

``train(trial, out_dir)`` trains one trial (see :mod:`raybench.engine.loop`); the Ray
sweep calls the same function inside each Ray Train worker.
"""

from raybench.engine.accel import NonFiniteLossError
from raybench.engine.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from raybench.engine.distributed import World
from raybench.engine.loop import METRICS_FILE, build_datasets, evaluate, train
from raybench.engine.reporting import ConsoleReporter, JsonlReporter, MultiReporter, Reporter, read_metrics

__all__ = [
    "METRICS_FILE",
    "ConsoleReporter",
    "JsonlReporter",
    "MultiReporter",
    "NonFiniteLossError",
    "Reporter",
    "World",
    "build_datasets",
    "evaluate",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_metrics",
    "train",
]
