"""File access of the results store: atomic writes, listing and parallel reads, through
``pyarrow.fs`` so a local folder, ``s3://`` and ``gs://`` behave alike.

Why atomic writes matter here: readers (the report, a resumed trial) may look at the store
while a trial writes it, so a file must appear whole or not at all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pyarrow.fs as pafs

from raybench.storage import resolve

T = TypeVar("T")
R = TypeVar("R")


def is_local(fs: pafs.FileSystem) -> bool:
    return fs.type_name == "local"


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the whole file or nothing.

    Local: temporary file in the same folder, fsync, rename. Object stores: one PUT
    (an object appears only once its upload completes; a rename there is a copy).
    """
    parent = path.rsplit("/", 1)[0]
    if is_local(fs):
        os.makedirs(parent, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return
    fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(data)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes | None:
    """The file's bytes, or None if it is missing or unreadable."""
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except (FileNotFoundError, OSError):
        return None


def list_files(fs: pafs.FileSystem, path: str) -> list[str]:
    """Every file below ``path`` (any depth); empty if ``path`` does not exist."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [path]
    if info.type != pafs.FileType.Directory:
        return []
    sel = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    return [i.path for i in fs.get_file_info(sel) if i.type == pafs.FileType.File]


def find_files(
    root: str | os.PathLike[str], name: re.Pattern[str] | str, folder: str | None = None
) -> tuple[pafs.FileSystem, list[str]]:
    """(fs, files) below ``root`` at any depth whose name matches ``name`` (a pattern, or an
    exact name) and, with ``folder``, whose parent folder is called ``folder``. Other files,
    ``*.tmp`` leftovers of an interrupted write included, are ignored."""
    fs, path = resolve(root)
    out = []
    for f in list_files(fs, path):
        head, _, base = f.rpartition("/")
        hit = name.match(base) if isinstance(name, re.Pattern) else base == name
        if hit and (folder is None or head.rsplit("/", 1)[-1] == folder):
            out.append(f)
    return fs, out


def map_files(fn: Callable[[T], R], items: Sequence[T], threads: int = 8) -> list[R]:
    """``fn`` over ``items`` on up to ``threads`` threads, results in order (object stores
    answer many small reads much faster in parallel)."""
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(items)))) as pool:
        return list(pool.map(fn, items))


__all__ = ["find_files", "is_local", "list_files", "map_files", "read_bytes", "write_bytes"]
