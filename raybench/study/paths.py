"""Paths in a study file: ``${VAR:-default}`` expansion, ``~``, and paths relative to the file.

Kept apart from the loader because the rules are the user's contract for every path a study
names (dataset roots, weights files), whatever the rest of the file says.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from raybench.study.schema import Collector

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")

_BARE_ENV = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


class UnsetVariableError(ValueError):
    """A ``${VAR}`` in a path names a variable that is not set and gives no default."""

    def __init__(self, variable: str, value: str) -> None:
        super().__init__(
            f"environment variable {variable} is not set (in {value!r}); set it, or give a "
            f"default: ${{{variable}:-/path}}"
        )
        self.variable = variable


def expand_path(value: str, base: Path) -> str:
    """``${VAR:-default}`` expansion, ``~``, and paths relative to the study file's folder.

    URIs (``s3://``, ``gs://``, ``http(s)://``) are kept as they are. An unset ``${VAR}``
    without a default raises :class:`UnsetVariableError`: expanding it to "" would turn
    ``${DATA}/gdxray`` into ``/gdxray`` (and a synthetic dataset would be written there).
    """

    bare = _BARE_ENV.search(value)
    if bare:
        raise ValueError(
            f"${bare.group(1)} in {value!r} is not expanded (only ${{VAR}} is); write ${{{bare.group(1)}}}"
        )

    def sub(m: re.Match[str]) -> str:
        if m.group(1) in os.environ:
            return os.environ[m.group(1)]
        if m.group(2) is None:
            raise UnsetVariableError(m.group(1), value)
        return m.group(3)

    expanded = os.path.expanduser(_ENV.sub(sub, value))
    if not expanded.strip():
        raise ValueError(f"path {value!r} is empty once expanded")
    if "://" in expanded or os.path.isabs(expanded):
        return expanded
    return str((base / expanded).resolve())


def expand_at(value: str, base: Path, path: str, out: Collector) -> str | None:
    """:func:`expand_path`, a problem at ``path`` (None) when it cannot be expanded."""
    try:
        return expand_path(value, base)
    except ValueError as exc:
        out.add(path, str(exc))
        return None


__all__ = ["UnsetVariableError", "expand_at", "expand_path"]
