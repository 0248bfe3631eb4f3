"""Task registry: the study's ``decoder`` -> the :class:`Task` that trains and evaluates it.

A task class serves a task kind -- every decoder registered for that kind in
``raybench.models.registry`` -- or named decoders. Adding one is one module in this package::

    # raybench/tasks/semantic.py
    from raybench.tasks import Task, register_task

    @register_task(kinds=("semantic",))
    class SemanticTask(Task):
        def build_model(self, meta): ...
        def train_step(self, model, batch): ...
        def predict(self, model, batch): ...
        def build_evaluator(self, meta, gather): ...

Every module of this package is imported on the first lookup, so nothing else needs editing;
a new semantic decoder needs no task code at all (it is registered with its builder).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence

from raybench.models.registry import find_decoder, list_decoders
from raybench.study.spec import TASK_KINDS, TrialSpec
from raybench.tasks.base import DatasetMeta, Evaluator, Gather, Task, Transform, move_to

#: Decoder name -> the task class that serves that decoder alone (e.g. a test's toy task).
_BY_DECODER: dict[str, type[Task]] = {}
#: Task kind -> the task class that serves every decoder registered for the kind.
_BY_KIND: dict[str, type[Task]] = {}
_LOADED = False
#: Task modules that failed to import (a broken task must not take the others down).
_FAILED: dict[str, BaseException] = {}


def _claim(table: dict[str, type[Task]], names: Sequence[str], cls: type[Task], what: str) -> None:
    for name in names:
        if name in table and table[name] is not cls:
            raise ValueError(f"{what} {name!r} is already served by {table[name].__name__}")
        table[name] = cls


def register_task(*decoders: str, kinds: Sequence[str] = ()) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: ``cls`` trains every decoder of the task ``kinds`` (as registered in
    ``raybench.models.registry``), and the named ``decoders``."""
    if not decoders and not kinds:
        raise ValueError("register_task needs a decoder name or a task kind")
    unknown = [k for k in kinds if k not in TASK_KINDS]
    if unknown:
        raise ValueError(f"unknown task kind(s) {unknown}; expected some of {TASK_KINDS}")

    def deco(cls: type[Task]) -> type[Task]:
        _claim(_BY_DECODER, decoders, cls, "decoder")
        _claim(_BY_KIND, kinds, cls, "task kind")
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


def _served(decoder: str) -> type[Task] | None:
    if decoder in _BY_DECODER:
        return _BY_DECODER[decoder]
    entry = find_decoder(decoder)
    return _BY_KIND.get(entry.task) if entry is not None else None


def list_tasks() -> list[str]:
    """Decoders that have a task, sorted."""
    _load_builtin()
    return sorted(set(_BY_DECODER) | {d for d in list_decoders() if _served(d) is not None})


def task_class(decoder: str) -> type[Task]:
    """The task class serving ``decoder`` (a clear error listing the known ones)."""
    _load_builtin()
    served = _served(decoder)
    if served is not None:
        return served
    known = ", ".join(list_tasks()) or "none"
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
