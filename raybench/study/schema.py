"""Typed, error-collecting conversion of plain YAML data into frozen dataclasses.

Why not stop at the first error: a study file is edited by hand and validated before any
GPU time is spent, so a user wants *every* problem in one pass, each with the YAML path
(and line, when known) where it is.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING
from typing import Any, Literal, Union


@dataclasses.dataclass
class Problem:
    """One validation problem: where (YAML path, optional line) and what."""

    path: str
    message: str
    line: int | None = None

    def format(self, source: str | None = None) -> str:
        where = ""
        if source:
            where = f"{source}:{self.line}: " if self.line else f"{source}: "
        elif self.line:
            where = f"line {self.line}: "
        return f"{where}{self.path or '<root>'}: {self.message}"


class StudyError(ValueError):
    """Raised with every problem found in a study, one per line."""

    def __init__(self, problems: list[Problem], source: str | None = None):
        self.problems = problems
        self.source = source
        lines = [p.format(source) for p in problems]
        head = f"{len(problems)} problem(s) in study" + (f" {source}" if source else "")
        super().__init__(head + ":\n  - " + "\n  - ".join(lines))


class Collector:
    """Accumulates problems; knows the YAML line of each path when a line map is given."""

    def __init__(self, lines: Mapping[str, int] | None = None):
        self.problems: list[Problem] = []
        self.lines = dict(lines or {})

    def add(self, path: str, message: str) -> None:
        line = self.lines.get(path)
        probe = path
        while line is None and probe:
            probe = _parent_path(probe)
            line = self.lines.get(probe)
        self.problems.append(Problem(path, message, line))


def _parent_path(path: str) -> str:
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


def join(path: str, key: str | int) -> str:
    """YAML path of a child: ``a.b`` for keys, ``a[0]`` for list items."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = typing.get_args(tp)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin in (dict, Mapping):
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


#: Ids and names that become parts of trial names, folder names and URIs: letters, digits,
#: ``_``, ``.`` and ``-``, starting with a letter or digit, and never ``..``.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SAFE_NAME_MAX = 100


def name_problem(value: Any) -> str | None:
    """Why ``value`` cannot be used as an id / name (None if it can).

    Such names end up in trial names, folder names and storage URIs: a ``/``, a space or a
    ``..`` would create folders elsewhere or names no shell quotes safely.
    """
    if not isinstance(value, str):
        return f"expected a name (a string), got {value!r}"
    if not SAFE_NAME.fullmatch(value) or ".." in value or len(value) > SAFE_NAME_MAX:
        return (
            f"{value!r} is not a safe name: use letters, digits, '_', '.' and '-', starting with a "
            f"letter or digit, no '..', at most {SAFE_NAME_MAX} characters (it becomes part of "
            "trial names and folder paths)"
        )
    return None


def _check_range(value: Any, meta: Mapping[str, Any], path: str, out: Collector) -> None:
    if meta.get("name") and isinstance(value, str):
        why = name_problem(value)
        if why:
            out.add(path, why)
    for key, test, word in (
        ("gt", lambda v, b: v > b, ">"),
        ("ge", lambda v, b: v >= b, ">="),
        ("lt", lambda v, b: v < b, "<"),
        ("le", lambda v, b: v <= b, "<="),
    ):
        if key in meta and isinstance(value, (int, float)) and not test(value, meta[key]):
            out.add(path, f"must be {word} {meta[key]}, got {value!r}")


def convert(tp: Any, value: Any, path: str, out: Collector) -> Any:
    """Convert ``value`` to type ``tp``; record problems in ``out`` and return a best effort."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial = Collector()
            result = convert(arg, value, path, trial)
            if not trial.problems:
                return result
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return convert(non_none[0], value, path, out)
        out.add(path, f"expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = did_you_mean(str(value), [str(c) for c in choices])
            out.add(path, f"expected {_type_name(tp)}, got {value!r}{hint}")
        return value
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            if args and len(args) == 2 and args[1] is Ellipsis and not isinstance(value, Mapping):
                value = [value]  # a scalar where a list is expected: accept as one item
            else:
                out.add(path, f"expected {_type_name(tp)}, got {value!r}")
                return ()
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                out.add(path, f"expected a list of {len(args)} items, got {len(value)}")
                return tuple(value)
            return tuple(convert(a, v, join(path, i), out) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [convert(item, v, join(path, i), out) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            out.add(path, f"expected a mapping, got {value!r}")
            return {}
        args = typing.get_args(tp)
        vt = args[1] if args else Any
        return {str(k): convert(vt, v, join(path, str(k)), out) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path, out)
    if tp is bool:
        if not isinstance(value, bool):
            out.add(path, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            out.add(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            out.add(path, f"expected a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            out.add(path, f"expected a string, got {value!r}")
        return value
    return value


def build(cls: type, data: Any, path: str, out: Collector, *, partial: bool = False) -> Any:
    """Build dataclass ``cls`` from a mapping, collecting every problem.

    With ``partial=True`` only the keys present are checked (for override blocks that are
    merged into a full recipe later) and a plain dict is returned.
    """
    if not isinstance(data, Mapping):
        out.add(path, f"expected a mapping, got {data!r}")
        return None
    before = len(out.problems)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    broken = False
    for key in data:
        if key not in fields:
            out.add(join(path, str(key)), f"unknown key{did_you_mean(str(key), fields)}")
    for name, f in fields.items():
        sub = join(path, name)
        if name in data:
            nested = _dataclass_of(hints[name])
            if partial and nested is not None and isinstance(data[name], Mapping):
                kwargs[name] = build(nested, data[name], sub, out, partial=True)
                continue
            seen = len(out.problems)
            value = convert(hints[name], data[name], sub, out)
            _check_range(value, f.metadata, sub, out)
            if len(out.problems) > seen and not partial and not _fits(hints[name], value):
                # Reported already; never hand a wrong-typed value on (code reading the spec
                # would crash on it). A default stands in, else the object is not built.
                broken = broken or (f.default is MISSING and f.default_factory is MISSING)
                continue
            kwargs[name] = value
        elif not partial and f.default is MISSING and f.default_factory is MISSING:
            out.add(sub, "required key is missing")
    if partial:
        return kwargs
    missing = broken or any(
        n not in kwargs and f.default is MISSING and f.default_factory is MISSING for n, f in fields.items()
    )
    if missing or (len(out.problems) > before and hasattr(cls, "__post_init__")):
        return None  # post-init checks on invalid parts would only add confusing messages
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # __post_init__ checks
        out.add(path, str(exc))
        return None


def _fits(tp: Any, value: Any) -> bool:
    """Shallow type test: is ``value`` of the kind ``tp`` promises (items not inspected)?"""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_fits(a, value) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is Literal:
        return any(type(value) is type(c) for c in typing.get_args(tp))
    if origin in (tuple, list):
        return isinstance(value, (tuple, list))
    if origin in (dict, Mapping):
        return isinstance(value, Mapping)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, tp)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass inside ``tp`` (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings merge key by key, everything else is replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def to_plain(obj: Any) -> Any:
    """Dataclasses/tuples -> JSON/YAML-friendly dicts/lists (for serialisation and W&B)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def from_plain(cls: type, data: Mapping[str, Any]) -> Any:
    """Inverse of :func:`to_plain` for a dataclass; raises :class:`StudyError` if invalid."""
    out = Collector()
    result = build(cls, data, "", out)
    if out.problems:
        raise StudyError(out.problems)
    return result


def yaml_line_map(text: str) -> dict[str, int]:
    """Map each YAML path (``a.b[0].c``) to its 1-based line, via the safe composer."""
    import yaml

    lines: dict[str, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node: Any, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                sub = join(path, str(key_node.value))
                lines[sub] = key_node.start_mark.line + 1
                walk(value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                sub = join(path, i)
                lines[sub] = item.start_mark.line + 1
                walk(item, sub)

    if root is not None:
        walk(root, "")
    return lines
