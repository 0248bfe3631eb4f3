"""Decoder registry: the one place a study decoder is declared (timm's ``register_model`` style).

A decoder is its builder function, decorated where it is defined::

    @register_decoder("upernet", task="semantic", options=SmpOptions)
    def upernet_head(channels, num_classes, options, ignore_index) -> SemanticHead: ...

Everything else reads this table: the study accepts ``decoder: upernet`` for a ``semantic``
dataset and reads its ``model:`` options into :class:`SmpOptions`; the task registry
(``raybench.tasks``) serves it with the task class registered for ``semantic``; and
``build_segmenter`` / ``build_detector`` call the builder. The builder's signature is the
task kind's (see ``raybench.models.semantic`` and ``raybench.models.detection``).

This module imports no torch; the built-in decoders are registered by importing their
modules on the first lookup.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args

from raybench.study.spec import TaskKind

#: Modules whose import registers the built-in decoders.
BUILTIN_MODULES: tuple[str, ...] = ("raybench.models.semantic", "raybench.models.detection")

Builder = Callable[..., Any]


@dataclass(frozen=True)
class Decoder:
    """A registered decoder: its name, task kind, typed options class and builder."""

    name: str
    task: str
    options: type
    build: Builder


_DECODERS: dict[str, Decoder] = {}
_LOADED = False


def register_decoder(name: str, *, task: str, options: type) -> Callable[[Builder], Builder]:
    """Function decorator: ``build`` builds decoder ``name`` for ``task`` from ``options``."""
    if task not in get_args(TaskKind):
        raise ValueError(f"decoder {name!r}: unknown task {task!r}; expected one of {get_args(TaskKind)}")

    def deco(build: Builder) -> Builder:
        known = _DECODERS.get(name)
        if known is not None and known.build is not build:
            raise ValueError(f"decoder {name!r} is already registered ({known.build.__qualname__})")
        _DECODERS[name] = Decoder(name, task, options, build)
        return build

    return deco


def _load_builtin() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def list_decoders(task: str | None = None) -> tuple[str, ...]:
    """Registered decoder names (of ``task`` only, when given), in registration order."""
    _load_builtin()
    return tuple(name for name, d in _DECODERS.items() if task is None or d.task == task)


def find_decoder(name: str) -> Decoder | None:
    """The registered decoder ``name``, or None."""
    _load_builtin()
    return _DECODERS.get(name)


def get_decoder(name: str) -> Decoder:
    """The registered decoder ``name`` (a ``ValueError`` listing the known ones otherwise)."""
    decoder = find_decoder(name)
    if decoder is None:
        raise ValueError(f"unknown decoder {name!r}; known decoders: {', '.join(list_decoders())}")
    return decoder


__all__ = ["BUILTIN_MODULES", "Decoder", "find_decoder", "get_decoder", "list_decoders", "register_decoder"]
