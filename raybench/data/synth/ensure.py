"""The synthetic data a study's ``synthetic:`` block asks for, written once and atomically."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from raybench.data.synth.writer import DEFAULT_SIZE, MARKER, marker_record, synthesize


def synthetic_is_current(root: Path, name: str, spec: Any) -> bool:
    """Whether ``root`` holds exactly the synthetic data ``spec`` (a study's ``synthetic:``
    block) asks for: its marker file records the same parameters."""
    try:
        written = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    size = DEFAULT_SIZE[name] if spec.size is None else int(spec.size)
    wanted = marker_record(name, spec.images, size, spec.seed, float(spec.object_scale), dict(spec.options))
    return written == wanted


def ensure_synthetic(root: str | Path, name: str, spec: Any) -> bool:
    """Write the synthetic dataset a study's ``synthetic:`` block asks for at ``root`` unless it
    is already there; returns whether data was written.

    A root written by an earlier ``synthesize`` with other parameters (an older study, another
    ``object_scale``) is replaced: training on stale synthetic data would be silent. A root
    without the marker (real or user data) is never touched. The data is written to a private
    temporary folder and renamed into place, so a reader never sees a partial root and
    concurrent writers (several trials) do not collide.
    """
    root = Path(root)
    if root.exists() and (not (root / MARKER).is_file() or synthetic_is_current(root, name, spec)):
        return False
    root.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = root.parent / f".{root.name}.tmp-{tag}"
    old = root.parent / f".{root.name}.old-{tag}"
    try:
        synthesize(
            name,
            tmp,
            images=spec.images,
            size=spec.size,
            seed=spec.seed,
            object_scale=spec.object_scale,
            **spec.options,
        )
        if root.exists():
            try:
                os.rename(root, old)  # a stale synthetic copy (checked above)
            except OSError:
                pass  # another writer moved it first
        try:
            os.rename(tmp, root)
        except OSError:
            if not root.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return True
