"""timm backbones as 4-level feature extractors (strides 4/8/16/32), with the frozen regime.

Every decoder in raybench (torchvision's FPN detectors, the Mask2Former port, smp decoders)
consumes the same :class:`Backbone`: a list of four feature maps plus ``channels`` and
``strides``. The backbone carries its pretraining's mean/std, because normalisation
belongs to the model, not to the dataset.

How a timm model becomes four levels depends on its type (:data:`ADAPTERS`, keyed on the
model's class): hierarchical models (ConvNets) through timm's ``features_only``; plain ViTs
(``VisionTransformer``, ``Eva``: DeiT, AugReg, DINOv3 ViTs) through ViTDet's simple feature
pyramid on the last block (:class:`ViTBackbone`).
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from timm.layers import LayerNorm2d
from timm.models import get_pretrained_cfg, load_state_dict_from_hf, model_entrypoint
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from raybench.study.spec import BackboneSpec

STRIDES = (4, 8, 16, 32)


@dataclass(frozen=True)
class KnownBackbone:
    """A named entry: the paper's backbones, so a study can say ``convnext_t``."""

    arch: str
    timm_model: str
    pretrained_tags: dict[str, str]  # pretraining label -> timm pretrained tag


# The paper's three backbones (design brief §1). Any other timm id works too.
KNOWN_BACKBONES: dict[str, KnownBackbone] = {
    "resnet50_gn": KnownBackbone("resnet50_gn", "resnet50_gn", {"supervised": "a1h_in1k"}),
    "convnext_t": KnownBackbone(
        "convnext_t", "convnext_tiny", {"supervised": "fb_in1k", "dinov3": "dinov3_lvd1689m"}
    ),
}


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
#: eps of the official ConvNeXt backbones' output norms (``LayerNorm(eps=1e-6, channels_first)``).
OUTPUT_NORM_EPS = 1e-6


#: ``timm.create_model`` arguments raybench sets itself: a study's ``timm_kwargs`` may not.
RESERVED_TIMM_KWARGS: frozenset[str] = frozenset(
    {"pretrained", "features_only", "out_indices", "drop_path_rate", "num_classes", "pretrained_cfg"}
)


def supports_output_norms(spec: BackboneSpec) -> bool:
    """Output norms exist for ConvNeXt (the official detection/segmentation backbones' ``norm{i}``)."""
    return spec.model_name.startswith("convnext")


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


def output_norms_enabled(spec: BackboneSpec) -> bool:
    """The backbone entry's ``output_norms``, defaulting to the architecture's official choice."""
    return supports_output_norms(spec) if spec.output_norms is None else bool(spec.output_norms)


class Backbone(nn.Module):
    """Four feature maps at strides 4/8/16/32 from a timm ``features_only`` model (or, in a
    subclass, from another kind of body: :class:`ViTBackbone`).

    ``output_norms=True`` adds a LayerNorm (channels-first, eps 1e-6) on each level, as the
    official ConvNeXt detection and segmentation backbones do before the neck (``norm{i}``;
    timm's ``features_only`` ConvNeXt has none). They are new layers (the classification
    checkpoints do not hold them), so they always train.

    ``frozen=True`` is the paper's frozen regime: no parameter of the pretrained ``body``
    takes gradients, its norm layers stay in eval mode whatever ``.train()`` says, and its
    forward pass builds no autograd graph (so the frozen regime also saves the backbone's
    activation memory). The output norms, if any, are then part of the head.
    """

    def __init__(
        self,
        body: nn.Module,
        name: str,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        output_norms: bool = False,
        channels: list[int] | None = None,
    ):
        super().__init__()
        self.body = body
        self.name = name
        if channels is None:
            info = body.feature_info
            self.channels: list[int] = list(info.channels())
            self.strides: list[int] = list(info.reduction())
        else:  # a body that is not a features_only model says what it gives
            self.channels, self.strides = list(channels), list(STRIDES)
        if tuple(self.strides) != STRIDES:
            raise ValueError(
                f"backbone {name!r} gives strides {self.strides}; raybench needs {list(STRIDES)} "
                "(set out_indices in the study's backbone entry)"
            )
        self.out_norms: nn.ModuleList | None = None
        if output_norms:
            self.out_norms = nn.ModuleList(LayerNorm2d(c, eps=OUTPUT_NORM_EPS) for c in self.channels)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.frozen = False

    def freeze(self) -> Backbone:
        """Fix every pretrained weight: requires_grad off, eval mode kept across ``train()`` calls."""
        self.frozen = True
        for p in self.body.parameters():
            p.requires_grad_(False)
        self.body.eval()
        return self

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if self.frozen:
            self.body.eval()
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8-range images [B,3,H,W] -> normalised floats with the pretraining's mean/std."""
        return (images.float() - self.mean) / self.std

    def body_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What the pretrained body gives (no graph in the frozen regime: see :meth:`forward`)."""
        return list(self.body(x))

    def neck(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """New (always trained) layers between the body and the decoder: the output norms."""
        if self.out_norms is not None:
            feats = [norm(f) for norm, f in zip(self.out_norms, feats)]
        return feats

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised images -> [C2, C3, C4, C5] feature maps."""
        if self.frozen:
            with torch.no_grad():
                feats = self.body_features(x)
        else:
            feats = self.body_features(x)
        return self.neck(feats)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def head_parameter_names(self) -> list[str]:
        """Parameters (names in this module) the optimizer treats as head, not backbone: the
        output norms in the frozen regime, where nothing pretrained trains (no backbone LR
        multiplier, no layer decay). Fine-tuned, they stay backbone parameters, as the official
        ConvNeXt layout names them (``backbone.norm{i}``)."""
        if not self.frozen or self.out_norms is None:
            return []
        return [f"out_norms.{n}" for n, _ in self.out_norms.named_parameters()]


# ---------------------------------------------------------------------------------------
# plain ViTs: ViTDet's simple feature pyramid on the last block

#: ViTDet's ``out_channels`` of every pyramid level (``SimpleFeaturePyramid``, all configs).
PYRAMID_CHANNELS = 256
#: eps of Detectron2's channels-first ``LayerNorm`` (``get_norm("LN", c)``), ViTDet's pyramid norm.
PYRAMID_NORM_EPS = 1e-6
#: The patch size the pyramid's strides assume (the last block's map is stride 16).
VIT_PATCH = 16


def _conv_ln(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    """Detectron2's ``Conv2d(..., bias=False, norm=LN)``: a bias-free conv, then LayerNorm."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        LayerNorm2d(out_channels, eps=PYRAMID_NORM_EPS),
    ]


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid (Li et al. 2022; Detectron2 ``SimpleFeaturePyramid``,
    ``scale_factors=(4.0, 2.0, 1.0, 0.5)``, ``norm="LN"``) from one stride-16 map of width
    ``dim`` to four levels at strides 4/8/16/32, each ``channels`` wide:

    - stride 4: deconv 2x2/2 to ``dim/2``, LayerNorm, GELU, deconv 2x2/2 to ``dim/4``;
    - stride 8: deconv 2x2/2 to ``dim/2``;
    - stride 16: the map itself;
    - stride 32: max-pool 2x2/2;

    each then a 1x1 conv and a 3x3 conv to ``channels``, both bias-free and followed by a
    channels-first LayerNorm (eps 1e-6). PyTorch's default initialisation, as ViTDet (which
    does not re-initialise the pyramid). Detectron2's ``top_block`` (P6) is not here: the
    detectors' FPN adds it (``LastLevelMaxPool``), as for every backbone."""

    def __init__(self, dim: int, channels: int = PYRAMID_CHANNELS) -> None:
        super().__init__()
        half, quarter = dim // 2, dim // 4
        scales: list[tuple[list[nn.Module], int]] = [
            (
                [
                    nn.ConvTranspose2d(dim, half, kernel_size=2, stride=2),
                    LayerNorm2d(half, eps=PYRAMID_NORM_EPS),
                    nn.GELU(),
                    nn.ConvTranspose2d(half, quarter, kernel_size=2, stride=2),
                ],
                quarter,
            ),
            ([nn.ConvTranspose2d(dim, half, kernel_size=2, stride=2)], half),
            ([], dim),
            ([nn.MaxPool2d(kernel_size=2, stride=2)], dim),
        ]
        self.levels = nn.ModuleList(
            nn.Sequential(*layers, *_conv_ln(width, channels, 1), *_conv_ln(channels, channels, 3))
            for layers, width in scales
        )
        self.channels = channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[B, dim, H/16, W/16]`` -> maps at strides 4, 8, 16, 32."""
        return [level(x) for level in self.levels]


class ViTBackbone(Backbone):
    """A plain ViT (timm ``VisionTransformer`` / ``Eva``) as four levels: the last block's
    tokens (after the model's final norm) as a stride-16 map, then :class:`SimpleFeaturePyramid`.

    - Input size: any. Images are padded at the bottom / right with 0.0 (= the mean colour,
      after normalising) to a multiple of 32 (two patches), so each level is exactly the padded
      size / its stride (the stride-32 max-pool needs an even token grid); position handling is
      the model's own at that grid (``dynamic_img_size``: learned tables interpolated, RoPE
      computed for the grid).
    - The pyramid is new (no checkpoint holds it): it is head in both regimes, trained with
      the decoder (:meth:`head_parameter_names`), as ViTDet gives it the decoder's learning
      rate (its layer-decay rule's last id). Frozen, only the pyramid trains and the ViT
      builds no autograd graph.
    - The final norm: the model's own (pretrained) ``norm`` on the last block, as DINOv3's
      dense evaluations read their features; ViTDet's MAE ViT has none.
    """

    def __init__(
        self,
        body: nn.Module,
        name: str,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        channels: int = PYRAMID_CHANNELS,
    ) -> None:
        super().__init__(body, name, mean, std, channels=[channels] * len(STRIDES))
        self.pyramid = SimpleFeaturePyramid(int(body.embed_dim), channels)
        self.pad_to = STRIDES[-1]

    def body_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        pad_h, pad_w = (-x.shape[-2]) % self.pad_to, (-x.shape[-1]) % self.pad_to
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return list(
            self.body.forward_intermediates(
                x, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True
            )
        )

    def neck(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.pyramid(feats[-1])

    def head_parameter_names(self) -> list[str]:
        """The pyramid, in both regimes: new layers, trained as the decoder is."""
        return [f"pyramid.{n}" for n, _ in self.pyramid.named_parameters()]


# ---------------------------------------------------------------------------------------
# adapters: how a timm model (by its class) becomes a Backbone


@dataclass(frozen=True)
class ModelInfo:
    """What the adapters need to know of a timm model before building it (from a shape-only
    model on the meta device)."""

    model_class: type
    patch_size: tuple[int, ...] | None = None


@dataclass(frozen=True)
class BackboneAdapter:
    """One family of timm models (``model_types``: their classes) made into a :class:`Backbone`.

    - ``create_kwargs(spec)``: ``timm.create_model`` arguments of the body (the study's
      ``timm_kwargs`` come first, these override);
    - ``prepare(body)``: the body as its weights are loaded into it (e.g. classifier dropped);
    - ``wrap(body, spec, mean, std)``: the :class:`Backbone`;
    - ``problems(spec, info)``: ``(key, message)`` pairs for entries it cannot serve;
    - ``ignored_file_keys``: classifier parts of its checkpoints it does not use (besides
      :data:`IGNORED_FILE_KEYS`).
    """

    name: str
    model_types: tuple[type, ...]
    create_kwargs: Callable[[BackboneSpec], dict[str, Any]]
    wrap: Callable[[nn.Module, BackboneSpec, tuple[float, ...], tuple[float, ...]], Backbone]
    problems: Callable[[BackboneSpec, ModelInfo], list[tuple[str, str]]]
    prepare: Callable[[nn.Module], nn.Module] = lambda body: body
    ignored_file_keys: tuple[str, ...] = ()


def _features_only_problems(spec: BackboneSpec, info: ModelInfo) -> list[tuple[str, str]]:
    if spec.pyramid_channels is not None:
        return [
            (
                "pyramid_channels",
                "pyramid_channels applies to plain ViTs (ViTDet's simple feature pyramid); this "
                "backbone gives its own 4 levels: remove the key",
            )
        ]
    return []


def _vit_problems(spec: BackboneSpec, info: ModelInfo) -> list[tuple[str, str]]:
    problems = []
    if spec.out_indices is not None:
        problems.append(
            (
                "out_indices",
                "a plain ViT gives the pyramid its last block (ViTDet); out_indices applies to "
                "hierarchical (features_only) backbones: remove the key",
            )
        )
    if info.patch_size is not None and tuple(info.patch_size) != (VIT_PATCH, VIT_PATCH):
        problems.append(
            (
                "timm_name",
                f"patch size {tuple(info.patch_size)}: raybench's ViT pyramid needs {VIT_PATCH}x{VIT_PATCH} "
                f"patches (its last block is the stride-{VIT_PATCH} level of strides {list(STRIDES)})",
            )
        )
    return problems


def _vit_prepare(body: nn.Module) -> nn.Module:
    """Drop the classifier and its pooling norm (never used, and an unused trainable parameter
    would stop DistributedDataParallel); keep every block and the final norm."""
    body.prune_intermediate_layers(indices=1, prune_norm=False, prune_head=True)
    return body


#: Hierarchical models (ConvNeXt, ResNet, ...): timm's ``features_only`` extractor. The
#: fallback for any model no other adapter claims.
FEATURES_ONLY = BackboneAdapter(
    name="features_only",
    model_types=(),
    create_kwargs=lambda spec: {"features_only": True, "out_indices": spec.out_indices or (-4, -3, -2, -1)},
    wrap=lambda body, spec, mean, std: Backbone(
        body, spec.id, mean, std, output_norms=output_norms_enabled(spec)
    ),
    problems=_features_only_problems,
)
#: Plain ViTs: timm's ``VisionTransformer`` (DeiT, AugReg, ...) and ``Eva`` (DINOv3's ViTs,
#: EVA): last block -> :class:`SimpleFeaturePyramid`.
VIT = BackboneAdapter(
    name="vit",
    model_types=(VisionTransformer, Eva),
    create_kwargs=lambda spec: {"num_classes": 0, "dynamic_img_size": True},
    wrap=lambda body, spec, mean, std: ViTBackbone(
        body, spec.id, mean, std, channels=spec.pyramid_channels or PYRAMID_CHANNELS
    ),
    problems=_vit_problems,
    prepare=_vit_prepare,
    ignored_file_keys=("fc_norm.", "attn_pool."),
)
#: Adapters tried in order (the first whose ``model_types`` the model is an instance of);
#: :data:`FEATURES_ONLY` when none is.
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


def is_plain_vit(spec: BackboneSpec) -> bool:
    """Whether the entry is served by the ViT pyramid (for docs and checks)."""
    return adapter_for(spec) is VIT


def resolve_timm_name(spec: BackboneSpec) -> str:
    """The timm id to create: the study's ``timm_name``, or a known arch + pretraining tag."""
    if "." in spec.timm_name or spec.arch not in KNOWN_BACKBONES:
        return spec.timm_name
    known = KNOWN_BACKBONES[spec.arch]
    tag = known.pretrained_tags.get(spec.pretraining)
    return f"{spec.timm_name}.{tag}" if tag else spec.timm_name


def _body_kwargs(
    spec: BackboneSpec, drop_path_rate: float = 0.0, adapter: BackboneAdapter | None = None
) -> dict[str, Any]:
    adapter = adapter or adapter_for(spec)
    kwargs: dict[str, Any] = {**spec.timm_kwargs, **adapter.create_kwargs(spec)}
    if drop_path_rate > 0:
        kwargs["drop_path_rate"] = drop_path_rate
    return kwargs


def _describe(label: str, keys: Iterable[str]) -> str:
    keys = list(keys)  # in the model's / the file's order: the first ones tell the most
    shown = ", ".join(keys[:_SHOWN_KEYS]) + (
        f", ... ({len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    )
    return f"{len(keys)} {label} key(s): {shown}"


def _as_state_dict(state: Any, where: str) -> dict[str, torch.Tensor]:
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
    return _as_state_dict(state, where)


#: How long a process waits for another one on its node to finish downloading the same weights.
DOWNLOAD_LOCK_TIMEOUT_S = 3600.0


def download_lock_path(source: str) -> Path:
    """The lock file of one weights source (``hf-hub:timm/...`` or a URL) in the Hugging Face
    cache (``HF_HOME`` / ``HF_HUB_CACHE``), which every process of a node shares."""
    import re

    from huggingface_hub import constants

    name = re.sub(r"[^A-Za-z0-9_.-]+", "--", source).strip("-")[:150]
    return Path(constants.HF_HUB_CACHE) / ".locks" / f"raybench--{name}.lock"


@contextmanager
def download_lock(source: str, timeout_s: float = DOWNLOAD_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the node-wide lock of ``source`` while fetching it: N DDP workers on one node do not
    download (or race on) the same checkpoint; the first fetches it into the cache, the others
    wait here and then read it from the cache. Without a writable cache folder: no lock (each
    process fetches, as before). The lock is an OS file lock: a process that dies releases it."""
    from filelock import FileLock, Timeout

    path = download_lock_path(source)
    lock: FileLock | None = FileLock(str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:
        print(f"[raybench] waiting for another process on this node to download {source}", flush=True)
        try:
            lock.acquire(timeout=timeout_s)
        except Timeout:
            raise BackboneWeightsError(
                f"waited {timeout_s:g} s for another process on this node to download {source} "
                f"(lock {path}); if no download is running, delete that file"
            ) from None
    except OSError:  # a read-only cache: nothing to share, nothing to lock
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _hub_state_dict(spec: BackboneSpec, timm_id: str) -> tuple[dict[str, torch.Tensor], str]:
    """The hub's state dict of ``timm_id`` (as timm would fetch it) and where it came from."""
    cfg = get_pretrained_cfg(timm_id)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    url = getattr(cfg, "url", None) if cfg is not None else None
    source = f"hf-hub:{hub_id}" if hub_id else (url or f"hf-hub:timm/{timm_id}")
    try:
        with download_lock(source):  # one download per node, however many workers ask
            if hub_id:
                filename = getattr(cfg, "hf_hub_filename", None)
                state: Any = (
                    load_state_dict_from_hf(hub_id, filename) if filename else load_state_dict_from_hf(hub_id)
                )
            elif url:
                state = torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
            else:
                raise RuntimeError(f"timm has no pretrained weights for {timm_id!r}")
    except Exception as exc:  # noqa: BLE001 -- network / cache / format errors: all mean "no weights"
        raise BackboneWeightsError(
            f"could not load pretrained weights for backbone {spec.id!r} "
            f"(timm model {timm_id!r}, hub id {source!r}): {type(exc).__name__}: {exc}\n"
            f"Either give the machine access to the Hugging Face hub, or download the weights "
            f"elsewhere and set `weights: /path/to/model.safetensors` on this backbone in the "
            f"study file (or `pretrained: false` for random init, e.g. smoke tests)."
        ) from exc
    where = f"pretrained weights {source}"
    return _as_state_dict(state, f"backbone {spec.id!r}: {where}"), where


def _filter_fn(arch: str) -> Callable[..., Any] | None:
    """timm's own checkpoint remapping for ``arch`` (e.g. FB / DINOv3 ConvNeXt -> timm names)."""
    module = importlib.import_module(model_entrypoint(arch).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def _fit_state_dict(
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


def _load_into(body: nn.Module, fitted: dict[str, torch.Tensor]) -> None:
    """Strict load; only :data:`IGNORED_MISSING_KEYS` may keep the body's own values."""
    own = body.state_dict()
    body.load_state_dict({k: fitted.get(k, own[k]) for k in own}, strict=True)


def _weights(spec: BackboneSpec, timm_id: str) -> tuple[dict[str, torch.Tensor], str] | None:
    """(state dict, its source) of the entry: its file, else the hub when ``pretrained``."""
    if spec.weights:
        path = Path(spec.weights)
        return read_weights_file(path, backbone_id=spec.id), f"weights file {path}"
    if spec.pretrained:
        return _hub_state_dict(spec, timm_id)
    return None


def check_weights(spec: BackboneSpec) -> None:
    """Raise :class:`BackboneWeightsError` unless the entry's ``weights:`` file fits its backbone.

    For study validation, before any trial starts: builds the backbone on the meta device only
    (no memory, fractions of a second) and reads the file. Entries without a file pass (the hub
    is only asked when a trial builds its model)."""
    if not spec.weights:
        return
    timm_id = resolve_timm_name(spec)
    adapter = adapter_for(spec)
    with torch.device("meta"):
        body = adapter.prepare(
            timm.create_model(timm_id, pretrained=False, **_body_kwargs(spec, adapter=adapter))
        )
    state, source = read_weights_file(Path(spec.weights), backbone_id=spec.id), f"weights file {spec.weights}"
    _fit_state_dict(state, body, spec, timm_id, source, adapter.ignored_file_keys)


def build_backbone(spec: BackboneSpec, *, drop_path_rate: float = 0.0, frozen: bool = False) -> Backbone:
    """Create the backbone of a study entry.

    Weights: a local file (``weights:``) if given; else the timm/HF hub id when
    ``pretrained: true``; random init only when the study says ``pretrained: false``. Loading
    is strict: every tensor of the feature extractor comes from the weights (classifier keys
    of the file are ignored, see :data:`IGNORED_FILE_KEYS`), or :class:`BackboneWeightsError`.
    """
    problems = backbone_problems(spec)
    if problems:
        raise ValueError("; ".join(f"backbone {spec.id!r}: {key}: {message}" for key, message in problems))
    timm_id = resolve_timm_name(spec)
    loaded = _weights(spec, timm_id)  # first: an unreadable file fails before any model is built
    adapter = adapter_for(spec)  # a shape-only model on the meta device; the RNG is not moved
    try:
        body = timm.create_model(timm_id, pretrained=False, **_body_kwargs(spec, drop_path_rate, adapter))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(f"backbone {spec.id!r}: timm cannot create {timm_id!r}: {exc}") from exc
    body = adapter.prepare(body)
    if loaded is not None:
        # The check builds a shape-only model; it must not move the global RNG (the decoder's
        # init after this is then the same whatever the weights' source).
        with torch.random.fork_rng(devices=[]):
            fitted = _fit_state_dict(loaded[0], body, spec, timm_id, loaded[1], adapter.ignored_file_keys)
            _load_into(body, fitted)
    cfg = getattr(body, "pretrained_cfg", {}) or {}
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    backbone = adapter.wrap(body, spec, mean, std)
    if frozen:
        backbone.freeze()
    return backbone
