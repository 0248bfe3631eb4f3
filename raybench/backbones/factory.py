"""From a study's backbone entry to a :class:`~raybench.backbones.base.Backbone`: the timm id,
the adapter serving its model class (:data:`ADAPTERS`), the entry checks study validation
runs, and the weights (a file, else the hub) loaded strictly."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import timm
import torch

from raybench.backbones.base import Backbone, BackboneAdapter, ModelInfo
from raybench.backbones.convnet import FEATURES_ONLY, supports_output_norms
from raybench.backbones.hub import _hub_state_dict
from raybench.backbones.vit import VIT
from raybench.backbones.weights import fit_state_dict, load_into, read_weights_file
from raybench.study.spec import BackboneSpec

#: The paper's backbones (docs/protocol.md) by ``arch``: pretraining label -> timm pretrained tag,
#: so a study may name ``timm_name: convnext_tiny`` and its pretraining. Any other timm id works
#: too, given in full (``convnext_small.fb_in22k``).
PRETRAINED_TAGS: dict[str, dict[str, str]] = {
    "resnet50_gn": {"supervised": "a1h_in1k"},
    "convnext_t": {"supervised": "fb_in1k", "dinov3": "dinov3_lvd1689m"},
}

#: ``timm.create_model`` arguments raybench sets itself: a study's ``timm_kwargs`` may not.
RESERVED_TIMM_KWARGS: frozenset[str] = frozenset(
    {"pretrained", "features_only", "out_indices", "drop_path_rate", "num_classes", "pretrained_cfg"}
)

#: Adapters tried in order (the first whose ``model_types`` the model is an instance of);
#: :data:`~raybench.backbones.convnet.FEATURES_ONLY` when none is.
ADAPTERS: list[BackboneAdapter] = [VIT]


def register_adapter(adapter: BackboneAdapter) -> BackboneAdapter:
    """Serve another family of timm models (tried before the built-in ones)."""
    ADAPTERS.insert(0, adapter)
    return adapter


@functools.lru_cache(maxsize=64)
def _model_info(model_name: str, kwargs_json: str) -> ModelInfo:
    kwargs = json.loads(kwargs_json)
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False, **kwargs)
    except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
        given = f" with timm_kwargs {kwargs}" if kwargs else ""
        raise ValueError(f"timm cannot create {model_name!r}{given}: {type(exc).__name__}: {exc}") from exc
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    return ModelInfo(type(model), tuple(int(p) for p in patch) if patch is not None else None)


def model_info(spec: BackboneSpec) -> ModelInfo:
    """Class and patch size of the entry's timm model (cached; a shape-only model, no weights)."""
    return _model_info(spec.model_name, json.dumps(spec.timm_kwargs, sort_keys=True, default=str))


def adapter_for(spec: BackboneSpec) -> BackboneAdapter:
    """The adapter serving the entry's timm model: keyed on the model's class."""
    cls = model_info(spec).model_class
    return next((a for a in ADAPTERS if issubclass(cls, a.model_types)), FEATURES_ONLY)


def resolve_timm_name(spec: BackboneSpec) -> str:
    """The timm id to create: the study's ``timm_name``, or a known arch + pretraining tag."""
    if "." in spec.timm_name or spec.arch not in PRETRAINED_TAGS:
        return spec.timm_name
    tag = PRETRAINED_TAGS[spec.arch].get(spec.pretraining)
    return f"{spec.timm_name}.{tag}" if tag else spec.timm_name


def backbone_problems(spec: BackboneSpec) -> list[tuple[str, str]]:
    """Cheap checks of a backbone entry (at most a shape-only model on the meta device, to know
    its type): ``(key, message)`` pairs, for study validation before any trial starts;
    :func:`build_backbone` raises on the same problems."""
    problems: list[tuple[str, str]] = []
    if spec.output_norms and not supports_output_norms(spec):
        problems.append(
            (
                "output_norms",
                f"output_norms applies to ConvNeXt backbones only (the official ConvNeXt detection and "
                f"segmentation backbones' norm0..3); timm model {spec.model_name!r} has no such layers: "
                "remove the key",
            )
        )
    reserved = sorted(set(spec.timm_kwargs) & RESERVED_TIMM_KWARGS)
    if reserved:
        problems.append(
            (
                "timm_kwargs",
                f"{', '.join(reserved)} set by raybench (out_indices, output_norms and the recipe's "
                "drop_path are keys of their own): remove from timm_kwargs",
            )
        )
        return problems
    try:
        adapter = adapter_for(spec)
    except ValueError as exc:
        problems.append(("timm_kwargs" if spec.timm_kwargs else "timm_name", str(exc)))
        return problems
    problems += adapter.problems(spec, model_info(spec))
    return problems


def _body_kwargs(spec: BackboneSpec, adapter: BackboneAdapter, drop_path_rate: float = 0.0) -> dict[str, Any]:
    kwargs: dict[str, Any] = {**spec.timm_kwargs, **adapter.create_kwargs(spec)}
    if drop_path_rate > 0:
        kwargs["drop_path_rate"] = drop_path_rate
    return kwargs


def _weights(spec: BackboneSpec, timm_id: str) -> tuple[dict[str, torch.Tensor], str] | None:
    """(state dict, its source) of the entry: its file, else the hub when ``pretrained``."""
    if spec.weights:
        path = Path(spec.weights)
        return read_weights_file(path, backbone_id=spec.id), f"weights file {path}"
    if spec.pretrained:
        return _hub_state_dict(spec, timm_id)
    return None


def check_weights(spec: BackboneSpec) -> None:
    """Raise :class:`~raybench.backbones.weights.BackboneWeightsError` unless the entry's
    ``weights:`` file fits its backbone.

    For study validation, before any trial starts: builds the backbone on the meta device only
    (no memory, fractions of a second) and reads the file. Entries without a file pass (the hub
    is only asked when a trial builds its model)."""
    if not spec.weights:
        return
    timm_id = resolve_timm_name(spec)
    adapter = adapter_for(spec)
    with torch.device("meta"):
        body = adapter.prepare(timm.create_model(timm_id, pretrained=False, **_body_kwargs(spec, adapter)))
    state, source = read_weights_file(Path(spec.weights), backbone_id=spec.id), f"weights file {spec.weights}"
    fit_state_dict(state, body, spec, timm_id, source, adapter.ignored_file_keys)


def build_backbone(spec: BackboneSpec, *, drop_path_rate: float = 0.0, frozen: bool = False) -> Backbone:
    """Create the backbone of a study entry.

    Weights: a local file (``weights:``) if given; else the timm/HF hub id when
    ``pretrained: true``; random init only when the study says ``pretrained: false``. Loading
    is strict: every tensor of the feature extractor comes from the weights (classifier keys
    of the file are ignored, see :data:`~raybench.backbones.weights.IGNORED_FILE_KEYS`), or
    :class:`~raybench.backbones.weights.BackboneWeightsError`.
    """
    problems = backbone_problems(spec)
    if problems:
        raise ValueError("; ".join(f"backbone {spec.id!r}: {key}: {message}" for key, message in problems))
    timm_id = resolve_timm_name(spec)
    loaded = _weights(spec, timm_id)  # first: an unreadable file fails before any model is built
    adapter = adapter_for(spec)  # a shape-only model on the meta device; the RNG is not moved
    try:
        body = timm.create_model(timm_id, pretrained=False, **_body_kwargs(spec, adapter, drop_path_rate))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(f"backbone {spec.id!r}: timm cannot create {timm_id!r}: {exc}") from exc
    body = adapter.prepare(body)
    if loaded is not None:
        # The check builds a shape-only model; it must not move the global RNG (the decoder's
        # init after this is then the same whatever the weights' source).
        with torch.random.fork_rng(devices=[]):
            fitted = fit_state_dict(loaded[0], body, spec, timm_id, loaded[1], adapter.ignored_file_keys)
            load_into(body, fitted)
    backbone = adapter.wrap(body, spec)
    if frozen:
        backbone.freeze()
    return backbone
