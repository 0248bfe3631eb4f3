"""Study checks that ask other packages: dataset options and task, headline metric names.

The answers come from the code that will act on them, so the study file is checked against
what really runs, not against a copy of it here:

* a dataset's options and its task from the data registry (``raybench.data``: each format's
  ``OPTIONS`` and ``task``);
* the metric names of a task from the evaluators themselves (``raybench.evaluation``), by
  evaluating an empty split.

Both packages import torch, so they are imported lazily; when one cannot be imported the
check is skipped (the run would fail at that import anyway, with its own message).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from raybench.study.schema import Collector, convert, did_you_mean, join
from raybench.study.spec import DECODERS, BackboneSpec, DatasetSpec

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


def check_dataset(dataset: DatasetSpec, path: str, out: Collector) -> DatasetSpec:
    """Check ``dataset.options`` and ``dataset.task`` against its format's loader.

    - every option must be one the loader accepts (``datasets[i].options.<key>``, with a
      "did you mean"); its type must match the loader's default where that is cheap to tell;
    - the study's ``task`` must be the format's task. A format whose task is an option
      (generic ``coco``: ``options.task``, default detection) gets the study's task passed
      as ``options.task`` when the options do not set it; when they do, the two must agree.

    Returns the dataset, with ``options.task`` filled in where that applies.
    """
    cls = _dataset_class(dataset.format)
    if cls is None:
        return dataset
    options_path = join(path, "options")
    if not isinstance(dataset.options, Mapping):
        return dataset  # already reported
    accepted: dict[str, Any] = dict(cls.OPTIONS)
    for key, value in dataset.options.items():
        if key not in accepted:
            out.add(
                join(options_path, key),
                f"unknown option for format {dataset.format!r}{did_you_mean(key, accepted)}; "
                f"known: {sorted(accepted)}",
            )
        else:
            _check_option_type(value, accepted[key], join(options_path, key), out)

    if dataset.task not in DECODERS:
        return dataset  # an unknown task is already reported
    if "task" not in accepted:
        fixed = getattr(cls, "task", None)
        if fixed is not None and fixed != dataset.task:
            out.add(
                join(path, "task"),
                f"format {dataset.format!r} gives {fixed!r} data, not {dataset.task!r}; "
                f"set task: {fixed} (and a decoder of {DECODERS.get(fixed, ())})",
            )
        return dataset
    allowed = getattr(cls, "TASKS", None)  # the values the loader's task option takes
    given = dataset.options.get("task")
    if given is None:
        if allowed is not None and dataset.task not in allowed:
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
    tasks (``raybench.tasks.semantic.SemanticEvaluator``: ``val/``, background index 0;
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
    if dataset.metric is None or dataset.task not in DECODERS:
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
