"""Where an experiment's files live (local folder or ``s3://`` / ``gs://`` URI).

```
<storage>/<experiment>/              Ray Tune experiment (Tuner state, one folder per Tune trial)
<storage>/<experiment>/train/<trial> Ray Train run of that trial: its checkpoints
<storage>/<experiment>/trials/<trial> raybench's own record: status.json, results/*.parquet,
                                     fresh_starts (how often --restart-errored started it over)
```

The Train run name is the trial name (no timestamp), so a retried, restored or re-launched
trial finds its own last checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from raybench.errors import StorageError
from raybench.probe import check_storage
from raybench.storage import is_uri, join_uri, resolve
from raybench.study.schema import name_problem

#: Per trial: how many times ``--restart-errored`` started it over (new W&B run each time).
FRESH_STARTS_FILE = "fresh_starts"


@dataclass(frozen=True)
class ExperimentLayout:
    """Paths of one experiment; pure strings so they travel to Ray workers."""

    storage: str
    name: str

    @classmethod
    def create(cls, storage: str | os.PathLike[str], name: str) -> ExperimentLayout:
        """Absolute storage; ``name`` must be a plain name (it is a folder of the storage)."""
        why = name_problem(name)
        if why:
            raise StorageError(f"experiment name: {why}")
        storage = str(storage)
        if not is_uri(storage):
            storage = str(Path(storage).expanduser().resolve())
        return cls(storage=storage, name=name)

    @property
    def root(self) -> str:
        return join_uri(self.storage, self.name)

    @property
    def train_storage(self) -> str:
        return join_uri(self.root, "train")

    def trial_dir(self, trial: str) -> str:
        return join_uri(self.root, "trials", trial)

    def wandb_dir(self, trial: str) -> str:
        """W&B writes local files: next to the trial when local, else a local cache."""
        if not is_uri(self.storage):
            return str(Path(self.root, "wandb", trial))
        cache = os.environ.get("RAYBENCH_WANDB_DIR", "~/.cache/raybench/wandb")
        return str(Path(cache).expanduser() / self.name / trial)

    def fresh_starts(self, trial: str) -> int:
        """How many times ``--restart-errored`` started ``trial`` over (0 if never)."""
        fs, path = resolve(join_uri(self.trial_dir(trial), FRESH_STARTS_FILE))
        if fs.get_file_info(path).type.name != "File":
            return 0
        with fs.open_input_stream(path) as f:
            return int(f.read().decode().strip() or 0)

    def count_fresh_start(self, trial: str) -> int:
        """Record one more fresh start of ``trial``; returns the new count."""
        count = self.fresh_starts(trial) + 1
        fs, path = resolve(join_uri(self.trial_dir(trial), FRESH_STARTS_FILE))
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(f"{count}\n".encode())
        return count


__all__ = ["ExperimentLayout", "check_storage", "is_uri", "join_uri"]
