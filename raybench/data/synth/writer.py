"""``synthesize``: write one synthetic dataset into a folder it owns (marked by :data:`MARKER`).

A folder written here carries the marker file; writing again into it clears it first, and a
non-empty folder without the marker is refused (stale files would mix in). The marker records
the parameters, so :func:`~raybench.data.synth.ensure.ensure_synthetic` can tell whether a
folder holds what a study asks for.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from raybench.data.synth.coco import synth_coco
from raybench.data.synth.gdxray import synth_gdxray
from raybench.data.synth.mask_folder import synth_mask_folder
from raybench.data.synth.options import positive_at_most
from raybench.data.synth.rareplanes import check_plane_width, synth_rareplanes
from raybench.data.synth.rubber_rings import synth_rubber_rings
from raybench.data.synth.severstal import synth_severstal

DEFAULT_SIZE = {
    "severstal": 256,
    "rubber_rings": 512,
    "rareplanes": 512,
    "gdxray": 572,
    "coco": 256,
    "mask_folder": 256,
}
MIN_IMAGES = {"rubber_rings": 3}
#: Largest ``object_scale``: beyond it most objects would only be clamped to the image.
MAX_OBJECT_SCALE = 10.0


def _check(name: str, images: int) -> None:
    need = MIN_IMAGES.get(name, 2)
    if images < need:
        raise ValueError(
            f"synthesize {name}: need at least {need} images so both splits are non-empty, got {images}"
        )


SYNTHESIZERS: dict[str, Callable[..., None]] = {
    "severstal": synth_severstal,
    "rubber_rings": synth_rubber_rings,
    "rareplanes": synth_rareplanes,
    "gdxray": synth_gdxray,
    "coco": synth_coco,
    "mask_folder": synth_mask_folder,
}


#: Written at the top of every synthetic dataset; its presence allows clearing the folder.
MARKER = ".raybench-synth.json"


def _prepare_out(out: Path) -> None:
    """Create ``out``, or clear it if a previous ``synthesize`` wrote it; refuse anything else.

    Writing into a non-empty folder would leave stale images that the new annotations do not
    describe (they would then be read as unannotated, or shift the split)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"synthesize: {out} is a file, expected a folder")
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        if entries and MARKER not in entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise ValueError(
                f"synthesize: {out} is not empty ({len(entries)} entries: {shown}) and was not written by "
                "`raybench data synth` (no marker file); choose a new or empty folder, or delete it first"
            )
        for p in out.iterdir():  # written by synth before: clear, so no stale file survives
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _object_scale(value: Any) -> float:
    """``object_scale`` as a float in (0, MAX_OBJECT_SCALE], or a ValueError saying what is expected."""
    return positive_at_most(
        "object_scale", value, MAX_OBJECT_SCALE, "1 = the real datasets' relative object sizes"
    )


def synthesize(
    name: str,
    out_dir: str | Path,
    images: int = 8,
    size: int | None = None,
    seed: int = 0,
    object_scale: float = 1.0,
    **options: Any,
) -> Path:
    """Write a synthetic ``name`` dataset with ``images`` images under ``out_dir``; returns it.

    ``object_scale`` multiplies the linear size of every defect / object (1 = the real
    datasets' relative sizes, clamped so an object still fits its image). At toy image sizes
    the real relative sizes give objects of 1-3 pixels that a randomly initialised backbone
    cannot learn in a few iterations; the smoke study sets a larger scale, the throughput
    benchmark keeps 1. Same ``object_scale`` = same output; 1 reproduces earlier datasets.

    Options: ``severstal``: ``csv_format="current"|"old"``; ``gdxray``: ``contrast`` (times the
    pores' grey-value step, 1 = the default look; the smoke study raises it so a random-init
    detector tells pores from the casting's smooth thickness variations); ``rareplanes``:
    ``plane_width`` (fuselage width and wing chord x this, 1 = real proportions). The result is readable by
    ``build_dataset(name, out_dir, split)`` for both splits (RarePlanes with
    ``unmapped="skip"``: it holds military roles). ``out_dir`` must be new, empty, or
    written by an earlier call (it is then cleared).
    """
    if name not in SYNTHESIZERS:
        raise ValueError(f"no synthesizer for {name!r}; known: {', '.join(sorted(SYNTHESIZERS))}")
    _check(name, images)
    allowed = {"severstal": {"csv_format"}, "gdxray": {"contrast"}, "rareplanes": {"plane_width"}}.get(
        name, set()
    )
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown synth option(s) for {name!r}: {', '.join(unknown)}")
    size = DEFAULT_SIZE[name] if size is None else int(size)
    if size < 16:
        raise ValueError(f"synthesize: size must be >= 16 pixels, got {size}")
    scale = _object_scale(object_scale)
    if "plane_width" in options:
        check_plane_width(options["plane_width"])
    out = Path(out_dir)
    _prepare_out(out)
    (out / MARKER).write_text(
        json.dumps(marker_record(name, images, size, seed, scale, options), sort_keys=True) + "\n"
    )
    SYNTHESIZERS[name](out, int(images), size, np.random.default_rng(seed), object_scale=scale, **options)
    return out


def marker_record(
    name: str, images: int, size: int, seed: int, scale: float, options: dict[str, Any]
) -> dict[str, Any]:
    """What the marker file says about the data (absent ``object_scale`` = 1: older markers stay valid)."""
    record = {"name": name, "images": int(images), "size": int(size), "seed": seed, "options": dict(options)}
    if scale != 1.0:
        record["object_scale"] = scale
    return record
