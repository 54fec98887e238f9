"""Every training setting has the type its dataclass field declares, and numbers are finite.

Settings come from JSON requests, command lines and a run's config.json (which a resumed run
reads back). A NaN guidance scale or a steps count of "3000" would otherwise surface far from
where it was set (a loss of NaN, a TypeError deep in the trainer) or be written into
avatar.json. ``check_settings`` walks the declared types (``int | None``, ``tuple[float, float]``,
``dict[str, int]``, nested config dataclasses, ...) and raises ValueError naming the setting by
its dotted path.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from typing import Any

__all__ = ["check_settings"]


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # a hint that does not resolve is not checked
        return {}


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'…' if len(text) > 60 else ''}"


def _problem(value: Any, hint: Any, name: str) -> str | None:
    """None when value fits hint, else what is wrong (sub-settings are checked recursively)."""
    if hint is Any or hint is object:
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        problems = [_problem(value, a, name) for a in args]
        if any(p is None for p in problems):
            return None
        if value is not None and type(None) in args:
            return next(p for a, p in zip(args, problems) if a is not type(None))
        return problems[0]
    if hint is type(None):
        return None if value is None else f"must be null; got {_describe(value)}"
    if hint is bool:
        return None if isinstance(value, bool) else f"must be true or false; got {_describe(value)}"
    if hint is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return None if ok else f"must be an integer; got {_describe(value)}"
    if hint is float:
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return f"must be a number; got {_describe(value)}"
        return None if math.isfinite(value) else f"must be a finite number; got {value!r}"
    if hint is str:
        return None if isinstance(value, str) else f"must be a string; got {_describe(value)}"
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            values = {f.name: getattr(value, f.name) for f in dataclasses.fields(hint)}
        elif isinstance(value, dict):
            values = value
        else:
            return f"must be an object of {hint.__name__} settings; got {_describe(value)}"
        check_settings(hint, values, name + ".")
        return None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return f"must be a list; got {_describe(value)}"
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return f"must hold {len(args)} values; got {len(value)}"
            items = list(zip(value, args))
        else:
            item = args[0] if args else Any
            items = [(v, item) for v in value]
        for i, (v, h) in enumerate(items):
            p = _problem(v, h, f"{name}[{i}]")
            if p is not None:
                return f"item {i} {p}"
        return None
    if origin is dict:
        if not isinstance(value, dict):
            return f"must be an object; got {_describe(value)}"
        key_hint, value_hint = args if args else (Any, Any)
        for k, v in value.items():
            p = _problem(k, key_hint, name) or _problem(v, value_hint, f"{name}.{k}")
            if p is not None:
                return f"entry {str(k)[:40]!r} {p}"
        return None
    return None  # a type this checker does not know (a Literal, a class): left to the config itself


def check_settings(cls: type, values: dict[str, Any], prefix: str = "") -> None:
    """Raise ValueError naming the first setting of `values` whose value does not fit the type
    that dataclass `cls` declares for it (unknown names are left to the config's own check)."""
    hints = _hints(cls)
    for name, value in values.items():
        if name in hints:
            problem = _problem(value, hints[name], prefix + name)
            if problem is not None:
                raise ValueError(f"the training setting {prefix + name!r} {problem}")
