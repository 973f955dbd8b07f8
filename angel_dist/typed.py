"""A value from YAML or a command line, as a dataclass field's type: what recipes and
`angel train --set` share."""

from __future__ import annotations

import types
import typing


def coerce(value, kind, where: str):
    """`value` as `kind` (a resolved type hint: bool, int, float, str, Optional of one, or any
    other type, which passes the value through); ValueError naming `where` otherwise."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if kind in (int, float):
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}") from None
        if kind is int and isinstance(value, float) and value != int(value):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return number
    if kind is str:
        return "" if value is None else str(value)
    return value
