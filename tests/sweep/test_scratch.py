"""A killed worker's scratch folder is removed by the next worker; a live one's is kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from raybench.sweep.scratch import PREFIX, remove_orphaned_scratch, scratch_dir


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _folder(root: Path, name: str) -> Path:
    folder = root / name
    (folder / "checkpoints" / "iter_0000010").mkdir(parents=True)
    (folder / "checkpoints" / "iter_0000010" / "state.pt").write_bytes(b"x" * 4096)
    return folder


def test_only_folders_of_exited_workers_are_removed(tmp_path: Path) -> None:
    dead = _folder(tmp_path, f"{PREFIX}{_dead_pid()}-gdxray-convnext_t-full-s42-abcd")
    live = _folder(tmp_path, f"{PREFIX}{os.getpid()}-gdxray-convnext_t-full-s42-efgh")
    other = _folder(tmp_path, "raybench-work-notapid-x")
    unrelated = _folder(tmp_path, "something-else-1-x")

    removed = remove_orphaned_scratch(tmp_path)

    assert removed == [dead]
    assert not dead.exists()
    assert live.is_dir() and other.is_dir() and unrelated.is_dir()


def test_a_new_scratch_folder_cleans_up_first_and_names_its_owner(tmp_path: Path) -> None:
    dead = _folder(tmp_path, f"{PREFIX}{_dead_pid()}-t-1234")
    with scratch_dir("severstal-resnet50_gn-full-s42", root=tmp_path) as work:
        assert not dead.exists()
        assert Path(work).name.startswith(f"{PREFIX}{os.getpid()}-severstal-resnet50_gn-full-s42-")
        assert Path(work).parent == tmp_path
    assert not Path(work).exists()
    assert remove_orphaned_scratch(tmp_path) == []
