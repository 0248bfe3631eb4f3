"""Study checks that ask other packages: datasets, backbones, headline metric names.

The answers come from the code that will act on them, so the study file is checked against
what really runs, not against a copy of it here:

* a dataset's options and its task from the data registry (``raybench.data``: each format's
  declared options, ``task`` and ``validate_options``), the decoders of a task from the
  decoder registry (``raybench.models.registry``);
* a backbone entry by building it as a trial would, on the meta device (``raybench.backbones``);
* the metric names of a task from the evaluators themselves (``raybench.evaluation``), by
  evaluating an empty split.

These packages import torch, so they are imported lazily; when one cannot be imported the
check is skipped (the run would fail at that import anyway, with its own message).
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from raybench.study.schema import Collector, convert, did_you_mean, join
from raybench.study.spec import TASK_KINDS, BackboneSpec, DatasetSpec

#: Stands for a class name in per-class metric names (``val/IoU-<class>``).
CLASS_PLACEHOLDER = "<class>"


def check_backbone(backbone: BackboneSpec, path: str, out: Collector) -> None:
    """The architecture in ``timm_name`` must exist in the installed timm: a typo would
    otherwise surface only when a trial builds its model on a GPU worker. Only the
    architecture is checked (``convnext_tiny`` of ``convnext_tiny.fb_in1k``); which pretrained
    tags exist depends on the timm version and the hub, and is reported when weights load."""
    try:
        import timm
    except ImportError:
        return
    arch = backbone.model_name
    if not timm.is_model(arch):
        out.add(
            join(path, "timm_name"),
            f"unknown timm architecture {arch!r}{did_you_mean(arch, timm.list_models())} "
            f"(timm {timm.__version__}; see timm.list_models())",
        )


def _dataset_class(fmt: str) -> type | None:
    """The registered class of ``fmt``; None if the registry cannot be imported or ``fmt`` is
    unknown (an unknown format is reported by the loader)."""
    try:
        from raybench.data import dataset_class
    except ImportError:
        return None
    try:
        return dataset_class(fmt)
    except ValueError:
        return None


def _check_option_type(value: Any, default: Any, path: str, out: Collector) -> None:
    """Where the default tells the type cheaply (bool / int / float / str / list / mapping)."""
    if value is None or default is None:
        return  # None often means "derive it" in the loaders; nothing to compare with
    if isinstance(default, (bool, int, float, str)):
        convert(type(default), value, path, out)
    elif isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            out.add(path, f"expected a list, got {value!r}")
            return
        kinds = {type(v) for v in default}
        if len(kinds) == 1 and next(iter(kinds)) in (bool, int, float, str):
            item = next(iter(kinds))
            for i, v in enumerate(value):
                convert(item, v, join(path, i), out)
    elif isinstance(default, Mapping) and not isinstance(value, Mapping):
        out.add(path, f"expected a mapping, got {value!r}")


def check_dataset_entry(dataset: DatasetSpec, path: str, out: Collector) -> DatasetSpec:
    """Check a study's dataset entry (``options``, ``task``) against its format's loader.

    - every option must be one the loader accepts (``datasets[i].options.<key>``, with a
      "did you mean"); its type must match the loader's default where that is cheap to tell;
    - the study's ``task`` must be the format's task. A format whose task is an option
      (generic ``coco``: ``options.task``, default detection) gets the study's task passed
      as ``options.task`` when the options do not set it; when they do, the two must agree.
      Such a format lists the tasks its option takes in ``TASKS``.

    Returns the dataset, with ``options.task`` filled in where that applies.
    """
    cls = _dataset_class(dataset.format)
    if cls is None:
        return dataset
    options_path = join(path, "options")
    if not isinstance(dataset.options, Mapping):
        return dataset  # already reported
    from raybench.data import dataset_options

    accepted = dataset_options(dataset.format)
    for key, value in dataset.options.items():
        if key not in accepted:
            out.add(
                join(options_path, key),
                f"unknown option for format {dataset.format!r}{did_you_mean(key, accepted)}; "
                f"known: {sorted(accepted)}",
            )
        else:
            _check_option_type(value, accepted[key], join(options_path, key), out)

    if dataset.task not in TASK_KINDS:
        return dataset  # an unknown task is already reported
    if "task" not in accepted:
        from raybench.models.registry import list_decoders

        if cls.task != dataset.task:
            out.add(
                join(path, "task"),
                f"format {dataset.format!r} gives {cls.task!r} data, not {dataset.task!r}; "
                f"set task: {cls.task} (and a decoder of {list_decoders(cls.task)})",
            )
        return dataset
    allowed = cls.TASKS  # the values the loader's task option takes
    given = dataset.options.get("task")
    if given is None:
        if dataset.task not in allowed:
            out.add(
                join(path, "task"),
                f"format {dataset.format!r} serves task {' or '.join(map(repr, allowed))}, "
                f"not {dataset.task!r}",
            )
            return dataset
        return replace(dataset, options={**dataset.options, "task": dataset.task})
    if given != dataset.task:
        out.add(
            join(options_path, "task"),
            f"option task {given!r} disagrees with the study's task {dataset.task!r}; "
            "leave the option out (the study's task is passed to the loader) or make them equal",
        )
    return dataset


@functools.cache
def metric_names(task: str) -> tuple[str, ...] | None:
    """The ``val/*`` metric names the evaluator of ``task`` reports; per-class names carry
    :data:`CLASS_PLACEHOLDER`. None if the evaluators cannot be imported.

    Asked of the evaluators with an empty split; the prefix and arguments are those of the
    tasks (``raybench.tasks.semantic.GatheredSemSegEvaluator``: ``val/``, background index 0;
    ``raybench.tasks.detection``: box AP, plus mask AP for instance segmentation).
    """
    names = (CLASS_PLACEHOLDER, CLASS_PLACEHOLDER)
    try:
        if task == "semantic":
            from raybench.evaluation.semseg import SemSegEvaluator

            keys = ["val/" + k for k in SemSegEvaluator(2, class_names=names, background_index=0).evaluate()]
        elif task in ("detection", "instance"):
            from raybench.evaluation.coco import CocoEvaluator

            iou_types = ("bbox", "segm") if task == "instance" else ("bbox",)
            evaluator = CocoEvaluator(iou_types, names[:1], gather=lambda state: [state], prefix="val/")
            keys = list(evaluator.evaluate())
        else:
            return ()
    except ImportError:
        return None
    return tuple(dict.fromkeys(keys))


def metric_matches(metric: str, names: Sequence[str]) -> bool:
    """``metric`` is one of ``names``, a per-class name matching any non-empty class name."""
    for name in names:
        if CLASS_PLACEHOLDER in name:
            pattern = re.escape(name).replace(re.escape(CLASS_PLACEHOLDER), ".+")
            if re.fullmatch(pattern, metric):
                return True
        elif metric == name:
            return True
    return False


def check_metric(dataset: DatasetSpec, path: str, out: Collector) -> None:
    """The headline ``metric`` must be one the task's evaluator reports."""
    if dataset.metric is None or dataset.task not in TASK_KINDS:
        return
    names = metric_names(dataset.task)
    if names is None:
        if not dataset.metric.startswith("val/"):
            out.add(join(path, "metric"), f"headline metric must be a val/ metric, got {dataset.metric!r}")
        return
    if not metric_matches(dataset.metric, names):
        out.add(
            join(path, "metric"),
            f"unknown metric {dataset.metric!r} for task {dataset.task!r}"
            f"{did_you_mean(dataset.metric, names)}; known: {', '.join(names)}",
        )


# --- what a trial checks when it starts, checked once by the study ------------------------
def _root_problem(root: Path, synthetic: bool) -> str | None:
    """Why ``root`` cannot serve as a dataset root before any index is built (None if it may)."""
    if root.exists():
        if not root.is_dir():
            return f"dataset root is not a folder: {root}"
        if not any(root.iterdir()):
            hint = " (remove it to have the synthetic data written there)" if synthetic else ""
            return f"dataset root is an empty folder: {root}{hint}"
        return None
    if not synthetic:
        return None  # reported as "not found" by the loader
    parent = root.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot write the synthetic dataset to {root}: {parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot write the synthetic dataset to {root}: {parent} is not writable"
    return None


def _index_splits(dataset: DatasetSpec, root: Path, path: str, out: Collector, shown_root: str) -> None:
    """Build both splits' indices (file lists, annotations: no pixels) as a trial would."""
    from raybench.data import DatasetFormatError, DatasetOptionError, build_dataset

    for split in ("train", "val"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a trial warns again; only refusals matter here
                build_dataset(dataset.format, root, split, **dataset.options)
        except DatasetOptionError as exc:
            out.add(join(join(path, "options"), exc.option), exc.detail.replace(str(root), shown_root))
            return
        except Exception as exc:  # noqa: BLE001 - any refusal of the loader is the user's to see
            text = str(exc).replace(str(root), shown_root)
            if not isinstance(exc, DatasetFormatError):
                text = f"{type(exc).__name__}: {text}"
            out.add(join(path, "root"), f"the {split} split cannot be read: {text}")
            return


def check_dataset_start(dataset: DatasetSpec, path: str, out: Collector, *, dry_run: bool) -> None:
    """What a trial would refuse at start about its dataset, asked of the loader itself.

    - option values: the format's ``validate_options`` (a ``DatasetOptionError`` names the
      option: ``datasets[i].options.<option>``), dry run or not;
    - real runs: the root must be a non-empty folder, and both splits must index (an empty
      split, e.g. ``val_series`` naming no series, is refused there). A ``synthetic:``
      dataset whose root does not exist yet is written to a temporary folder and indexed
      there (a few KB, milliseconds), so its options meet the data the trial will get.
    """
    cls = _dataset_class(dataset.format)
    if cls is None or not isinstance(dataset.options, Mapping):
        return
    from raybench.data import DatasetOptionError

    options_path = join(path, "options")
    try:
        cls.validate_options(dict(dataset.options))
    except DatasetOptionError as exc:
        out.add(join(options_path, exc.option), exc.detail)
        return
    except Exception as exc:  # noqa: BLE001 - any other refusal of the loader names no option
        out.add(options_path, str(exc))
        return
    if dry_run or "://" in dataset.root:
        return
    root = Path(dataset.root)
    why = _root_problem(root, dataset.synthetic is not None)
    if why:
        out.add(join(path, "root"), why)
        return
    if root.exists():
        _index_splits(dataset, root, path, out, str(root))
        return
    if dataset.synthetic is None:
        return
    from raybench.data.synth import synthesize

    synth = dataset.synthetic
    with tempfile.TemporaryDirectory(prefix="raybench-check-") as tmp:
        where = Path(tmp) / root.name
        try:
            synthesize(
                dataset.format,
                where,
                images=synth.images,
                size=synth.size,
                seed=synth.seed,
                object_scale=synth.object_scale,
                **synth.options,
            )
        except Exception as exc:  # noqa: BLE001
            out.add(join(path, "synthetic"), f"cannot write synthetic {dataset.format!r} data: {exc}")
            return
        _index_splits(dataset, where, path, out, f"{root} (synthetic)")


def _feature_levels(model_name: str) -> str:
    """``"levels 0..3 at strides 4, 8, 16, 32"`` of a timm architecture (best effort)."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            info = timm.create_model(model_name, pretrained=False).feature_info
        strides = [int(i["reduction"]) for i in info]
    except Exception:  # noqa: BLE001 - only a hint
        return ""
    return f"; {model_name} has feature levels 0..{len(strides) - 1} at strides {strides}"


@functools.cache
def _build(spec: BackboneSpec) -> tuple[Any, str | None]:
    """Build the backbone as a trial would (random init, on the meta device: no memory, no
    weights read): ``(backbone, None)``, or ``(None, the error text)``."""
    import torch

    from raybench.backbones import build_backbone

    try:
        with torch.device("meta"):
            return build_backbone(spec), None
    except Exception as exc:  # noqa: BLE001 - whatever the trial would die of
        hint = _feature_levels(spec.model_name) if spec.out_indices else ""
        return None, f"{type(exc).__name__}: {exc}{hint}"


def _probe_spec(backbone: BackboneSpec) -> BackboneSpec:
    """The entry as built for checks: no weights (their file is checked on its own)."""
    return replace(backbone, id="-", pretrained=False, weights=None, pretraining_data="")


def _built(backbone: BackboneSpec) -> tuple[Any, str | None]:
    probe = _probe_spec(backbone)
    try:
        hash(probe)
    except TypeError:
        return _build.__wrapped__(probe)
    return _build(probe)


def check_layer_decay(backbone: BackboneSpec, path: str, out: Collector) -> None:
    """``optimizer.layer_decay`` needs a layer-id rule for the backbone's parameters (the
    optimizer refuses at trial start otherwise)."""
    try:
        from raybench.recipes.optim import layer_ids
    except ImportError:
        return
    module, problem = _built(backbone)
    if module is None:
        return  # reported at the backbone
    try:
        layer_ids(module)
    except ValueError as exc:
        out.add(path, f"{exc} (backbone {backbone.id!r})")


def check_backbone_start(backbone: BackboneSpec, path: str, out: Collector, *, dry_run: bool) -> None:
    """The backbone builds as a trial would build it (``out_indices``, strides, architecture
    options), and in a real run its ``weights`` file is one the backbone can load."""
    try:
        from raybench.backbones import backbone_problems, check_weights
    except ImportError:
        return
    found = backbone_problems(backbone)  # entry checks needing no model
    for key, message in found:
        out.add(join(path, key), message)
    if found:
        return
    _, problem = _built(backbone)
    if problem:
        key = "out_indices" if backbone.out_indices is not None else "timm_name"
        out.add(join(path, key), f"the backbone cannot be built: {problem}")
        return
    if dry_run or not backbone.weights or "://" in backbone.weights:
        return
    if not Path(backbone.weights).is_file():
        return  # reported by the loader
    try:
        check_weights(backbone)
    except Exception as exc:  # noqa: BLE001 - BackboneWeightsError, or what loading raised
        out.add(join(path, "weights"), str(exc))
