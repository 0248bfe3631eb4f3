"""Task registry: the study's ``decoder`` -> the :class:`Task` that trains and evaluates it.

Adding a task is one module in this package::

    # raybench/tasks/semantic.py
    from raybench.tasks import Task, register_task

    @register_task("mask2former")
    class Mask2FormerTask(Task):
        def build_model(self, meta): ...
        def train_step(self, model, batch): ...
        def predict(self, model, batch): ...
        def build_evaluator(self, meta, gather): ...

Every module of this package is imported on the first lookup, so nothing else needs editing.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from raybench.study.spec import TrialSpec
from raybench.tasks.base import DatasetMeta, Evaluator, Gather, Task, Transform, move_to

_REGISTRY: dict[str, type[Task]] = {}
_LOADED = False
#: Task modules that failed to import (a broken task must not take the others down).
_FAILED: dict[str, BaseException] = {}


def register_task(*decoders: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: ``cls`` trains the given study decoders."""
    if not decoders:
        raise ValueError("register_task needs at least one decoder name")

    def deco(cls: type[Task]) -> type[Task]:
        for name in decoders:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise ValueError(f"decoder {name!r} is already served by {_REGISTRY[name].__name__}")
            _REGISTRY[name] = cls
        cls.decoders = tuple(dict.fromkeys((*cls.decoders, *decoders)))
        return cls

    return deco


def _load_builtin() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            try:
                importlib.import_module(f"{__name__}.{info.name}")
            except Exception as exc:  # reported when one of its decoders is asked for
                _FAILED[f"{__name__}.{info.name}"] = exc


def list_tasks() -> list[str]:
    """Decoders that have a task, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def task_class(decoder: str) -> type[Task]:
    """The task class serving ``decoder`` (a clear error listing the known ones)."""
    _load_builtin()
    try:
        return _REGISTRY[decoder]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        failed = "".join(f"; {m} failed to import: {type(e).__name__}: {e}" for m, e in _FAILED.items())
        raise ValueError(
            f"no task is registered for decoder {decoder!r}; known decoders: {known}{failed}"
        ) from next(iter(_FAILED.values()), None)


def build_task(trial: TrialSpec) -> Task:
    """The task of ``trial`` (by its dataset's decoder)."""
    return task_class(trial.decoder)(trial)


__all__ = [
    "DatasetMeta",
    "Evaluator",
    "Gather",
    "Task",
    "Transform",
    "build_task",
    "list_tasks",
    "move_to",
    "register_task",
    "task_class",
]
