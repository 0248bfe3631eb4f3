"""Strict weights loading: a checkpoint (a local file or the hub's, :mod:`raybench.backbones.hub`)
fits the feature extractor completely, or a :class:`BackboneWeightsError` names the file and
every missing / unexpected key and shape mismatch. A ``pretrained: true`` trial never silently
trains from random weights."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from safetensors import SafetensorError
from timm.models import model_entrypoint
from torch import nn

from raybench.study.spec import BackboneSpec


class BackboneWeightsError(RuntimeError):
    """Pretrained weights could not be had, or do not fit the backbone (the message says which
    file or hub id, and which keys / shapes): a ``pretrained: true`` trial never silently
    trains from random weights."""


#: Keys a weights file may hold that the 4-level feature extractor does not use: classifier
#: heads, which timm's ``features_only`` drops (ConvNeXt ``head.norm`` / ``head.fc``, ResNet
#: ``fc``, others ``classifier``). Every other key of the file must be used.
IGNORED_FILE_KEYS: tuple[str, ...] = ("head.", "fc.", "classifier.")
#: Keys of the backbone that a weights file may lack: BatchNorm step counters (not weights;
#: unused with a fixed momentum). Every other tensor of the backbone must come from the file.
IGNORED_MISSING_KEYS: tuple[str, ...] = (".num_batches_tracked",)
#: Containers some checkpoints wrap their state dict in (FB ConvNeXt: ``model``).
CONTAINER_KEYS: tuple[str, ...] = ("state_dict", "model")
#: How many keys an error message lists (then a count).
_SHOWN_KEYS = 8


def _describe(label: str, keys: Iterable[str]) -> str:
    keys = list(keys)  # in the model's / the file's order: the first ones tell the most
    shown = ", ".join(keys[:_SHOWN_KEYS]) + (
        f", ... ({len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    )
    return f"{len(keys)} {label} key(s): {shown}"


def as_state_dict(state: Any, where: str) -> dict[str, torch.Tensor]:
    """``state`` unwrapped (:data:`CONTAINER_KEYS`, DDP's ``module.``) and checked to be a
    non-empty mapping of names to tensors."""
    for key in CONTAINER_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not state:
        raise BackboneWeightsError(
            f"{where} holds {'an empty mapping' if isinstance(state, Mapping) else type(state).__name__}, "
            "not a state dict (a mapping of parameter names to tensors)"
        )
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise BackboneWeightsError(f"{where}: not a state dict: {_describe('non-tensor', bad)}")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


def read_weights_file(path: Path, *, backbone_id: str = "?") -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` (safetensors) or anything else (``torch.load``,
    ``weights_only=True``), unwrapped from ``state_dict`` / ``model`` containers and DDP's
    ``module.`` prefix. Every failure is a :class:`BackboneWeightsError` naming the file."""
    where = f"backbone {backbone_id!r}: weights file {path}"
    if not path.is_file():
        raise BackboneWeightsError(f"backbone {backbone_id!r}: weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            state: Any = safetensors.torch.load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise BackboneWeightsError(
                f"{where} is not a readable safetensors file ({type(exc).__name__}: {exc}); "
                "re-download it or point `weights:` at the right file"
            ) from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- unpickling raises many types; all mean "not a checkpoint"
            raise BackboneWeightsError(
                f"{where} could not be read as a PyTorch checkpoint (torch.load, weights_only=True: "
                f"{type(exc).__name__}: {exc}); expected a state dict saved with torch.save, or a "
                ".safetensors file"
            ) from exc
    return as_state_dict(state, where)


def _filter_fn(arch: str) -> Callable[..., Any] | None:
    """timm's own checkpoint remapping for ``arch`` (e.g. FB / DINOv3 ConvNeXt -> timm names)."""
    module = importlib.import_module(model_entrypoint(arch).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def fit_state_dict(
    state: dict[str, torch.Tensor],
    body: nn.Module,
    spec: BackboneSpec,
    timm_id: str,
    source: str,
    ignored: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """``state`` as a strict state dict of ``body``, or a :class:`BackboneWeightsError` naming
    ``source`` and every missing / unexpected key and shape mismatch.

    Keys are checked in the classification model's names (what checkpoints use): timm's
    checkpoint filter is applied against a shape-only (meta-device) full model, then each
    tensor of the feature extractor is matched to its full-model name."""
    with torch.device("meta"):
        full = timm.create_model(timm_id, pretrained=False, **spec.timm_kwargs)
    full_keys = list(full.state_dict())
    note = ""
    filter_fn = _filter_fn(spec.model_name)
    if filter_fn is not None:
        try:
            state = dict(filter_fn(dict(state), full))
        except Exception as exc:  # noqa: BLE001 -- the filter assumes its own architecture's keys
            note = f" (timm's checkpoint filter for {spec.model_name!r} failed on it: {exc!r})"

    # feature-extractor name <-> full-model name: timm flattens `stages.0` into `stages_0`.
    by_norm: dict[str, list[str]] = {}
    for k in full_keys:
        by_norm.setdefault(k.replace("_", "."), []).append(k)
    body_to_full: dict[str, str] = {}
    for k in body.state_dict():
        match = by_norm.get(k.replace("_", "."), [])
        if len(match) != 1:
            raise RuntimeError(
                f"raybench cannot map feature-extractor tensor {k!r} of {timm_id!r} to timm's names"
            )
        body_to_full[k] = match[0]
    needed = set(body_to_full.values())
    missing = [k for k in body_to_full.values() if k not in state and not k.endswith(IGNORED_MISSING_KEYS)]
    unexpected = [k for k in state if k not in needed and not k.startswith(IGNORED_FILE_KEYS + ignored)]
    full_shapes = full.state_dict()
    shapes = [
        f"{k}: file {tuple(state[k].shape)}, model {tuple(full_shapes[k].shape)}"
        for k in body_to_full.values()
        if k in state and tuple(state[k].shape) != tuple(full_shapes[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(_describe("missing", missing))
        if unexpected:
            parts.append(_describe("unexpected", unexpected))
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): " + "; ".join(shapes[:_SHOWN_KEYS]))
        raise BackboneWeightsError(
            f"backbone {spec.id!r}: {source} does not fit timm model {timm_id!r}{note}: "
            + "; ".join(parts)
            + ". Check that the file holds weights of this architecture (ignored: classifier keys "
            f"{', '.join(p + '*' for p in IGNORED_FILE_KEYS + ignored)})."
        )
    return {bk: state[fk] for bk, fk in body_to_full.items() if fk in state}


def load_into(body: nn.Module, fitted: dict[str, torch.Tensor]) -> None:
    """Strict load; only :data:`IGNORED_MISSING_KEYS` may keep the body's own values."""
    own = body.state_dict()
    body.load_state_dict({k: fitted.get(k, own[k]) for k in own}, strict=True)
