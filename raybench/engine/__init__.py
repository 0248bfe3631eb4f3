"""The training engine: one iteration loop for every task, with or without Ray.

``train(trial, out_dir)`` trains one trial (see :mod:`raybench.engine.loop`, and
docs/engine.md for the modules it is made of); the Ray sweep calls the same function inside
each Ray Train worker.
"""

from raybench.engine.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from raybench.engine.distributed import World
from raybench.engine.evaluate import evaluate
from raybench.engine.loaders import build_datasets
from raybench.engine.loop import train
from raybench.engine.losses import NonFiniteLossError
from raybench.engine.sinks import (
    METRICS_FILE,
    JsonlReporter,
    LogReporter,
    MultiReporter,
    Reporter,
    read_metrics,
)

__all__ = [
    "METRICS_FILE",
    "JsonlReporter",
    "LogReporter",
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
