"""``--resume --restart-errored``: which trials errored, and resetting them so they start at
iteration 0 (their Train run and resume records removed; results rows and finished trials kept).
"""

from __future__ import annotations

from typing import Any

from raybench.results.store import STATUS_FILE, read_status_of
from raybench.storage import join_uri, resolve
from raybench.sweep.layout import ExperimentLayout
from raybench.sweep.reporter import RESUMES_FILE
from raybench.sweep.trainable import TRIAL_KEY


def errored_trials(root_path: str, storage_fs: Any) -> list[str]:
    """Names of the trials Tune recorded as ERROR in the experiment at ``root_path``."""
    from ray import tune

    analysis = tune.ExperimentAnalysis(root_path, storage_filesystem=storage_fs)
    return sorted(str(t.config.get(TRIAL_KEY)) for t in analysis.trials if t.status == "ERROR")


def reset_trials(layout: ExperimentLayout, names: list[str]) -> tuple[list[str], list[str]]:
    """Remove what would make these trials resume instead of starting fresh: the Train run
    (``train/<trial>``: its checkpoints and the snapshot Train V2 reloads on start), the
    resume records and the failure status. Results rows stay (a fresh run re-reports every
    iteration, newer rows win on read-back; the cost table counts the lost time), and so do
    fault-drill markers. A trial whose status says ``finished`` is never touched.

    Returns ``(reset, kept_because_finished)``.
    """
    reset, kept = [], []
    for name in names:
        status = read_status_of(layout.trial_dir(name))
        if status and status.get("state") == "finished":
            kept.append(name)
            continue
        fs, train_dir = resolve(join_uri(layout.train_storage, name))
        if fs.get_file_info(train_dir).type.name == "Directory":
            fs.delete_dir(train_dir)
        fs, trial_dir = resolve(layout.trial_dir(name))
        for f in (RESUMES_FILE, STATUS_FILE):
            if fs.get_file_info(f"{trial_dir}/{f}").type.name == "File":
                fs.delete_file(f"{trial_dir}/{f}")
        layout.count_fresh_start(name)  # the restarted trial logs to a new W&B run
        reset.append(name)
    return reset, kept


__all__ = ["errored_trials", "reset_trials"]
