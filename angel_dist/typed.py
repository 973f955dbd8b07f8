"""A value from YAML or a command line, as a dataclass field's type: what recipes and
`angel train --set` share."""

from __future__ import annotations

import types
import typing


def coerce(value, kind, where: str):
    """`value` as `kind` (a resolved type hint: bool, int, float, str, list[...] and dict[str, ...] of
    those, a union of them, or any other type, which passes the value through); ValueError naming
    `where` otherwise. A union takes the first of its types the value fits (`int | list[int]`:
    `2` or `[1, 2]`); on a command line a list is written `a,b` and a mapping in YAML (`{a: 1}`)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(options) < len(typing.get_args(kind)) and (
                value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        errors = []
        for option in options:
            try:
                return coerce(value, option, where)
            except ValueError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ValueError(f"{where}: expected {' or '.join(_name(o) for o in options)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(kind) or (typing.Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.strip().strip("[]").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, item, where) for v in value]
    if origin is dict:
        _, item = typing.get_args(kind) or (str, typing.Any)
        if isinstance(value, str):
            import yaml

            value = yaml.safe_load(value) if value.strip() else {}
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping such as {{name: 1}}, got {value!r}")
        return {str(k): coerce(v, item, where) for k, v in value.items()}
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, (list, tuple, dict)):
            raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}") from None
        if kind is int and isinstance(value, float) and value != int(value):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return number
    if kind is str:
        if isinstance(value, (list, tuple, dict)):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return "" if value is None else str(value)
    return value


def _name(kind) -> str:
    origin = typing.get_origin(kind)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_name(a) for a in typing.get_args(kind))}]"
    return getattr(kind, "__name__", str(kind))
