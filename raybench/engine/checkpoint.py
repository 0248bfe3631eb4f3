"""Checkpoints that resume exactly, written atomically, read with ``weights_only=True``.

Layout: ``OUT/checkpoints/iter_0000500/state.pt`` (one folder per checkpoint, so a Ray
reporter can hand the folder to ``ray.train.Checkpoint.from_directory``). A checkpoint is
first written to a hidden temporary folder beside it and then renamed into place: a crash
while writing leaves a stray ``.tmp-*`` folder that is ignored, never a half-written
``iter_*`` folder.

Everything in ``state.pt`` is plain (tensors, numbers, strings, lists, dicts), so loading
never unpickles arbitrary objects: NumPy's RNG state is stored as a tensor + numbers.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raybench.errors import NoSpaceError

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.pt"
FORMAT = 1
_NAME = re.compile(r"^iter_(\d+)$")
#: Free space below the state's size plus this after a failed write counts as a full disk.
_SPACE_MARGIN = 64 * 2**20


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def state_nbytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts / lists): about what ``torch.save`` writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v) for v in obj)
    return 0


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


def _no_space(root: Path, final: Path, need: int, free: int) -> NoSpaceError:
    kept = latest_checkpoint(root.parent)
    return NoSpaceError(
        f"no space left on {root} for checkpoint {final.name} (needs about {_mb(need)}, "
        f"{_mb(free)} free); "
        + (f"the last good checkpoint {kept.name} is kept; " if kept else "")
        + "free some space or point --out / --storage at a larger disk, then resume"
    )


def _is_space_error(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT, as an OSError or inside torch's writer message (``inline_container.cc``)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left" in text or "Disk quota exceeded" in text


def estimate_checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """About what one checkpoint of ``model`` + ``optimizer`` will take, before any exists:
    the model's state plus the optimizer's per-parameter slots (Adam/AdamW: 2, SGD with
    momentum: 1) over the parameters it trains."""
    model_bytes = state_nbytes(model.state_dict())
    trained = sum(p.numel() * p.element_size() for g in optimizer.param_groups for p in g["params"])
    name = type(optimizer).__name__.lower()
    slots = 2 if "adam" in name else 1 if any(g.get("momentum") for g in optimizer.param_groups) else 0
    return model_bytes + slots * trained


def check_checkpoint_space(out_dir: str | Path, need: int) -> None:
    """Refuse (:class:`NoSpaceError`) to start a run whose first checkpoint would not fit
    beside ``out_dir``: better now than after hours of training."""
    where = Path(out_dir)
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < need:
        raise NoSpaceError(
            f"no space left on {where} for checkpoints of this run (each needs about {_mb(need)}, "
            f"{_mb(free)} free); free some space or point --out / --storage at a larger disk"
        )


def save_checkpoint(out_dir: str | Path, iteration: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as checkpoint ``iteration`` atomically, keep ``keep``; returns the folder.

    A full disk raises :class:`NoSpaceError` naming the folder, before writing when the free
    space is already short of the state's size, else when the write fails; either way the
    partial write is removed and the previous checkpoints stay as they were.
    """
    root = Path(out_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(iteration)
    need = state_nbytes(state)
    free = shutil.disk_usage(root).free
    if free < need:
        raise _no_space(root, final, need, free)
    tmp = root / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # the same iteration written before (a re-run): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and not isinstance(exc, NoSpaceError):
            # torch reports a full disk as "enforce fail at inline_container.cc ... file write
            # failed", without the errno: judge by the free space once the partial file is gone.
            free = shutil.disk_usage(root).free
            if _is_space_error(exc) or (
                isinstance(exc, (OSError, RuntimeError)) and free < need + _SPACE_MARGIN
            ):
                raise _no_space(root, final, need, free) from exc
        raise
    if keep > 0:
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``out_dir``, oldest first."""
    root = Path(out_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (its folder or its ``state.pt``) on CPU with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {state.get('format')!r}, this raybench reads {FORMAT}")
    return state


# --- RNG state ------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """This process's Python, NumPy, torch and CUDA RNG states, as plain data."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only if the device count matches)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def derived_seed(*parts: int) -> int:
    """A 32-bit seed for a stream of its own (a worker, a loader), from ``parts``."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint32)[0])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class preserved_rng:
    """Context manager: every RNG is as before on exit (evaluation must not shift training)."""

    def __enter__(self) -> preserved_rng:
        self._state = capture_rng()
        return self

    def __exit__(self, *exc: object) -> None:
        restore_rng(self._state)
