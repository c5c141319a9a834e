"""Stage settings: one dataclass per ``params.yaml`` group, one loader for all of them.

A settings class lists each key as a dataclass field with its default (the one place defaults
live) and, through :func:`setting`, what values are allowed: ``choices``, a minimum / maximum,
a strict lower bound. :func:`load_settings` builds the class from the group's dict: an unknown
key (a typo) is refused with the known ones named, each value is coerced to the field's type
(an int where a float is expected is fine; a string where a number is expected is not), each
bound is checked, then the class's own ``check()`` runs for rules across keys (``max_s`` not
below ``min_s``). Every refusal is a :class:`ParamsError` whose message is one line naming the
key, the value and what is allowed, so a stage stops before any work with that line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class ParamsError(ValueError):
    """A params value that is not allowed (the message is one line naming the key)."""


def setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, choices: tuple | None = None,
            min: float | None = None, max: float | None = None, above: float | None = None) -> Any:
    """A settings field: its default (``factory`` for a list or dict) and the values allowed."""
    meta = {k: v for k, v in (("choices", choices), ("min", min), ("max", max), ("above", above)) if v is not None}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def load_settings(cls: type[T], group: dict | None, name: str) -> T:
    """``cls`` (a settings dataclass) from the params group ``name``; ParamsError on any bad value."""
    group = dict(group or {})
    known = [f.name for f in dataclasses.fields(cls)]
    for key in group:
        if key not in known:
            raise ParamsError(f"params.yaml {name}.{key}: unknown key (known: {', '.join(known)})")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in group:
            values[f.name] = coerce(group[f.name], hints[f.name], f"{name}.{f.name}", f.metadata)
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if callable(check):
        check()
    return obj


def fail(key: str, value: Any, allowed: str) -> ParamsError:
    return ParamsError(f"params.yaml {key}: {value!r} is not allowed: {allowed}")


def coerce(value: Any, hint: Any, key: str, meta: typing.Mapping = types.MappingProxyType({})) -> Any:
    """``value`` as type ``hint`` (int, float, bool, str, Literal, X | None, list[X], tuple[X, ...],
    dict[str, X], a nested settings dataclass, or a union tried in order), then the field's bounds."""
    out = _as_type(value, hint, key)
    _check_bounds(out, key, meta, value)
    return out


def _as_type(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for member in (a for a in args if a is not type(None)):
            try:
                return _as_type(value, member, key)
            except ParamsError as e:
                errors.append(str(e).split(" is not allowed: ", 1)[-1])
        raise fail(key, value, " or ".join(errors))
    if origin is Literal:
        if value in args:
            return value
        raise fail(key, value, "must be one of " + ", ".join(map(str, args)))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise fail(key, value, "must be a mapping of its own keys")
        return load_settings(hint, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail(key, value, "must be a list")
        item = args[0] if args else Any
        items = [_as_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise fail(key, value, "must be a mapping")
        item = args[1] if len(args) == 2 else Any
        return {k: _as_type(v, item, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise fail(key, value, "must be true or false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
            raise fail(key, value, "must be a whole number")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(key, value, "must be a number")
        return float(value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise fail(key, value, "must be a string")
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise fail(key, value, f"must be {getattr(hint, '__name__', hint)}")


def _check_bounds(value: Any, key: str, meta: typing.Mapping, given: Any) -> None:
    if value is None or not meta:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise fail(key, given, "must be one of " + ", ".join(map(str, meta["choices"])))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if "min" in meta and value < meta["min"]:
        raise fail(key, given, f"must be >= {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise fail(key, given, f"must be <= {meta['max']}")
    if "above" in meta and value <= meta["above"]:
        raise fail(key, given, f"must be > {meta['above']}")
