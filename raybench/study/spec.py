"""The study's data model: frozen, serialisable specs (no torch, no Ray imports).

A :class:`TrialSpec` is everything one trial does; the engine, the sweep and the report
all read it and nothing else, so a trial is reproducible from its spec alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from raybench.study.schema import from_plain, to_plain

#: What a dataset's labels are for; a decoder is registered for one of these
#: (``raybench.models.registry``), and a format's data serves one (``raybench.data``).
TaskKind = Literal["semantic", "detection", "instance"]
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)
Regime = Literal["frozen", "full"]
# Headline metric per task kind (the study may override per dataset).
DEFAULT_METRIC: dict[str, str] = {
    "semantic": "val/mIoU",
    "detection": "val/box_AP50",
    "instance": "val/mask_AP",
}


@dataclass(frozen=True)
class OptimizerSpec:
    """Optimizer hyper-parameters, defined for the *global* batch size."""

    name: Literal["sgd", "adamw"]
    lr: float = field(metadata={"gt": 0})
    weight_decay: float = field(default=0.0, metadata={"ge": 0})
    momentum: float = field(default=0.9, metadata={"ge": 0, "lt": 1})
    betas: tuple[float, float] = (0.9, 0.999)
    backbone_lr_mult: float = field(default=1.0, metadata={"ge": 0})
    layer_decay: float | None = field(default=None, metadata={"gt": 0, "le": 1})
    norm_weight_decay: float | None = field(default=None, metadata={"ge": 0})
    bias_weight_decay: float | None = field(default=None, metadata={"ge": 0})
    embed_weight_decay: float | None = field(default=None, metadata={"ge": 0})
    #: every 1-D parameter and every bias (norms, layer-scale ``gamma``): ConvNeXt's own rule;
    #: overrides the three above when set.
    one_d_weight_decay: float | None = field(default=None, metadata={"ge": 0})
    #: torch's fused update (one kernel for every parameter). None: on CUDA only, so CPU runs
    #: keep their exact numbers; True: on CPU too (the same update up to rounding, ~6x faster
    #: than the per-parameter loop for AdamW over a ConvNeXt-T: the smoke study's CPU time).
    fused: bool | None = None


@dataclass(frozen=True)
class ScheduleSpec:
    """Iteration-based LR schedule.

    ``length: "3x"`` places Detectron2's steps for an N x 90k schedule (for N > 2 at
    total-60k and total-20k, else at 2/3 and 8/9 of it) and scales them to ``iterations``.
    """

    name: Literal["multistep", "poly", "constant"]
    iterations: int = field(metadata={"gt": 0})
    length: str | None = None
    steps: tuple[int, ...] = ()
    gamma: float = field(default=0.1, metadata={"gt": 0})
    power: float = field(default=0.9, metadata={"gt": 0})
    warmup_iters: int = field(default=0, metadata={"ge": 0})
    warmup_factor: float = field(default=0.001, metadata={"gt": 0, "le": 1})

    def __post_init__(self) -> None:
        if self.length is not None:
            from raybench.study.schedule import parse_length

            parse_length(self.length)  # raises ValueError with a clear message
        if any(s <= 0 or s >= self.iterations for s in self.steps):
            raise ValueError(f"schedule.steps must lie in (0, {self.iterations}), got {self.steps}")


@dataclass(frozen=True)
class InputSpec:
    """Image sizes and augmentation; sizes are short edges in pixels."""

    train_short_edge: tuple[int, ...]
    train_max_size: int = field(metadata={"gt": 0})
    test_short_edge: int = field(metadata={"gt": 0})
    test_max_size: int = field(metadata={"gt": 0})
    crop_size: tuple[int, int] | None = None
    crop_defect_p: float = field(default=0.7, metadata={"ge": 0, "le": 1})
    flip: bool = True
    color_aug_ssd: bool = False  # Mask2Former's INPUT.COLOR_AUG_SSD (semantic training only)
    size_divisibility: int = field(default=32, metadata={"gt": 0})


@dataclass(frozen=True)
class ClipSpec:
    """Gradient clipping: ``full_model`` = one L2 norm over all parameters (Mask2Former)."""

    type: Literal["full_model", "norm", "value"] = "full_model"
    value: float = field(default=0.01, metadata={"gt": 0})


@dataclass(frozen=True)
class RecipeSpec:
    """Everything about how one trial trains; learning rates refer to ``batch_size``."""

    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    input: InputSpec
    batch_size: int = field(metadata={"gt": 0})
    clip_grad: ClipSpec | None = None
    amp: bool = True
    drop_path: float = field(default=0.0, metadata={"ge": 0, "lt": 1})
    eval_period: int = field(default=1000, metadata={"gt": 0})
    checkpoint_period: int = field(default=1000, metadata={"gt": 0})
    log_period: int = field(default=20, metadata={"gt": 0})
    loader_workers: int = field(default=4, metadata={"ge": 0})
    #: read the loss terms back to the host (and check them for NaN) every this many iterations
    sync_period: int = field(default=20, metadata={"gt": 0})
    #: on CUDA: convolution weights in the channels-last (NHWC) layout
    channels_last: bool = True
    #: ``torch.compile`` the task's compile targets (the backbone) in place
    compile: bool = False
    model: dict[str, Any] = field(default_factory=dict)
    by_backbone: dict[str, dict[str, Any]] = field(default_factory=dict)

    def model_options(self, decoder: str) -> Any:
        """The decoder's typed options (defaults filled in), of the class it is registered with."""
        from raybench.models.registry import get_decoder  # the builders register the decoders

        return from_plain(get_decoder(decoder).options, self.model)


@dataclass(frozen=True)
class SynthSpec:
    """How to write a synthetic copy of a dataset when its root is absent (smoke runs)."""

    images: int = field(default=8, metadata={"gt": 0})
    size: int = field(default=64, metadata={"gt": 0})
    seed: int = field(default=0, metadata={"ge": 0})
    #: multiplies every object's size (raybench.data.synth.synthesize); 1 = real relative sizes
    object_scale: float = field(default=1.0, metadata={"gt": 0, "le": 10})
    #: the generator's own options (e.g. gdxray ``contrast``, severstal ``csv_format``)
    options: dict[str, Any] = field(default_factory=dict)


#: Field metadata of ids and names that end up in trial names and paths (see ``name_problem``).
NAME: dict[str, Any] = {"name": True}


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the study: where it is, how to read it, and how to train on it."""

    id: str = field(metadata=NAME)
    format: str
    task: TaskKind
    decoder: str
    root: str
    recipe: str = field(metadata=NAME)
    options: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    synthetic: SynthSpec | None = None

    @property
    def headline_metric(self) -> str:
        return self.metric or DEFAULT_METRIC[self.task]


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone = architecture + pretraining (+ where its weights come from)."""

    id: str = field(metadata=NAME)
    arch: str = field(metadata=NAME)
    timm_name: str
    pretraining: str = field(metadata=NAME)
    pretraining_data: str = ""
    pretrained: bool = True
    weights: str | None = None
    out_indices: tuple[int, ...] | None = None
    #: ConvNeXt only: a LayerNorm on each output level, as the official ConvNeXt detection /
    #: segmentation backbones (``norm{i}``); None = the architecture's default (ConvNeXt: on).
    output_norms: bool | None = None
    #: Extra keyword arguments of ``timm.create_model`` (e.g. ``{depth: 2}`` for a shallow
    #: smoke-test ViT); raybench's own (``features_only``, ``drop_path_rate``, ...) are refused.
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Plain ViTs only: channels of the four levels of the simple feature pyramid (ViTDet's
    #: ``out_channels``); None = 256, as ViTDet.
    pyramid_channels: int | None = field(default=None, metadata={"gt": 0})

    @property
    def model_name(self) -> str:
        """timm architecture without the pretrained tag (``convnext_tiny``)."""
        return self.timm_name.split(".", 1)[0]


@dataclass(frozen=True)
class RowSpec:
    """One row of Table 2: a backbone under a regime."""

    backbone: str = field(metadata=NAME)
    regime: Regime


@dataclass(frozen=True)
class ScalingSpec:
    """Resources of one trial. The global batch never changes with ``workers``."""

    workers: int = field(default=1, metadata={"gt": 0})
    use_gpu: bool = True
    gpus_per_worker: float = field(default=1.0, metadata={"ge": 0})
    cpus_per_worker: float = field(default=4.0, metadata={"gt": 0})
    #: Cap on a worker's micro-batch (accumulation makes up the rest of the global batch);
    #: ``auto``: start from the whole per-worker share and halve it on an out-of-memory error
    #: (the engine's fallback; on CUDA it is on for any value, see docs/preflight.md).
    max_batch_per_worker: int | Literal["auto"] | None = field(default=None, metadata={"gt": 0})
    max_concurrent_trials: int | None = field(default=None, metadata={"gt": 0})
    driver_cpus: float = field(default=1.0, metadata={"ge": 0})
    #: Extra Ray resources each train worker needs, e.g. ``{accelerator_type:A100: 0.01}`` or a
    #: custom node resource (``{spot_gpu: 1}``): trials then run only on nodes that have them.
    #: CPU and GPU are set by ``cpus_per_worker`` / ``gpus_per_worker``.
    resources_per_worker: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, amount in self.resources_per_worker.items():
            if name in ("CPU", "GPU", "memory"):
                field_name = {"CPU": "cpus_per_worker", "GPU": "gpus_per_worker"}.get(name)
                hint = f"set scaling.{field_name} instead" if field_name else "not a per-worker resource here"
                raise ValueError(f"resources_per_worker.{name}: {hint}")
            if not isinstance(amount, (int, float)) or isinstance(amount, bool) or amount <= 0:
                raise ValueError(f"resources_per_worker.{name}: expected a number > 0, got {amount!r}")

    def per_worker_batch(self, global_batch: int) -> tuple[int, int]:
        """(micro-batch per worker, gradient-accumulation steps) for a global batch."""
        share = global_batch // self.workers
        cap = self.max_batch_per_worker if isinstance(self.max_batch_per_worker, int) else share
        accum = -(-share // cap)
        while share % accum:
            accum += 1
        return share // accum, accum


@dataclass(frozen=True)
class TrialSpec:
    """One trial, frozen and serialisable; ``name`` is stable and human-readable."""

    study: str
    dataset: DatasetSpec
    backbone: BackboneSpec
    regime: Regime
    seed: int
    recipe: RecipeSpec
    scaling: ScalingSpec
    #: Share of the training split this trial trains on (the label-efficiency axis; a nested,
    #: class-stratified subset, ``raybench.engine.subsets.fraction_subset``); 1.0 = all of it.
    train_fraction: float = field(default=1.0, metadata={"gt": 0, "le": 1})

    @property
    def name(self) -> str:
        return trial_name(
            self.dataset.id,
            self.backbone.arch,
            self.backbone.pretraining,
            self.regime,
            self.seed,
            self.train_fraction,
        )

    @property
    def task(self) -> str:
        return self.dataset.task

    @property
    def decoder(self) -> str:
        return self.dataset.decoder

    def axes(self) -> dict[str, Any]:
        """The grid coordinates of this trial (for tables, tags and Parquet columns)."""
        return {
            "trial": self.name,
            "study": self.study,
            "dataset": self.dataset.id,
            "task": self.task,
            "decoder": self.decoder,
            "backbone": self.backbone.arch,
            "timm_name": self.backbone.timm_name,
            "pretraining": self.backbone.pretraining,
            "regime": self.regime,
            "seed": self.seed,
            "train_fraction": self.train_fraction,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain data; ``train_fraction`` only when it is not 1.0, so a full-data trial's JSON
        (and the resume check that compares it) is the same as before the axis existed."""
        plain = to_plain(self)
        if self.train_fraction == 1.0:
            plain.pop("train_fraction")
        return plain

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialSpec:
        return from_plain(cls, data)

    @classmethod
    def from_json(cls, text: str) -> TrialSpec:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> TrialSpec:
        return dataclasses.replace(self, **changes)


def fraction_suffix(fraction: float) -> str:
    """``-f0.25`` for a training fraction below 1.0; ``""`` for 1.0 (names stay as they were)."""
    return "" if fraction == 1.0 else f"-f{fraction:g}"


def trial_name(
    dataset: str, arch: str, pretraining: str, regime: str, seed: int, train_fraction: float = 1.0
) -> str:
    """``gdxray-convnext_t-dinov3-frozen-s42`` (``...-s42-f0.25`` on a quarter of the training
    split): stable, readable, safe as a folder name."""
    return f"{dataset}-{arch}-{pretraining}-{regime}-s{seed}{fraction_suffix(train_fraction)}"
