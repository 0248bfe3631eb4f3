"""A Ray Train worker's local scratch folder, and removal of those killed workers left behind.

The engine writes its checkpoints to a local folder before Ray copies them to the trial's
storage. A worker that exits normally removes that folder; one that is killed (a lost node
that comes back, the OOM killer, a crashed driver, a fault drill) cannot, and a detection
trial's folder holds two checkpoints: hundreds of MB each. On a long-lived node these add
up until the disk is full, so every new worker first removes the folders whose owning
process is gone. The owner's PID is part of the name; a folder whose owner still runs, or
whose name does not parse, is left alone.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "raybench-work-"
_NAME = re.compile(rf"^{re.escape(PREFIX)}(\d+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def remove_orphaned_scratch(root: str | Path | None = None) -> list[Path]:
    """Remove scratch folders under ``root`` (the temp dir) whose owning process has exited."""
    base = Path(root) if root is not None else Path(tempfile.gettempdir())
    removed = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _NAME.match(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink() or _alive(int(match.group(1))):
            continue
        size = _size(entry)
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            log.info("removed %s (%.0f MB) left by an exited worker", entry, size / 2**20)
            removed.append(entry)
    return removed


def scratch_dir(trial_name: str, root: str | Path | None = None) -> tempfile.TemporaryDirectory:
    """This worker's scratch folder (a context manager), after removing orphaned ones."""
    remove_orphaned_scratch(root)
    return tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-{trial_name}-", dir=root)
