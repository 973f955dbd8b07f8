"""Typed config values: what recipes, `angel train --set` and the config dataclasses share.

A field's type says what it accepts: bool, int, float (finite), str, a `Literal` of choices,
an Optional or other union, a list or tuple of those, a mapping, and `Annotated[T, Range(...)]`
for bounds. `coerce` turns a YAML or command-line value into that type or raises a ConfigError
naming the key; `check_fields` runs it over every field of a dataclass (from its
`__post_init__`), so a bound is written once, on the field, and holds wherever the config is
built. A recipe section reports the error under its dotted key (`ConfigError.within`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from dataclasses import dataclass
from typing import Annotated


class ConfigError(ValueError):
    """A config value that is wrong: `key: what was expected, got what`."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")

    def within(self, section: str) -> "ConfigError":
        return ConfigError(f"{section}.{self.key}" if section else self.key, self.problem)


@dataclass(frozen=True)
class Range:
    """Bounds on a number: `Annotated[int, Range(ge=1)]`."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, value) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def describe(self) -> str:
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {low[1:]}"
        return f"{'<=' if high[-1] == ']' else '<'} {high[:-1]}"


# The bounds most fields need, named once.
PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Share = Annotated[float, Range(gt=0, le=1)]  # a fraction of something, all of it at most


def coerce(value, kind, key: str):
    """`value` as `kind` (a resolved type hint); ConfigError naming `key` otherwise. Lists and
    mappings never become strings or numbers; floats are finite."""
    bounds = []
    while typing.get_origin(kind) is Annotated:
        bounds += [b for b in kind.__metadata__ if isinstance(b, Range)]
        kind = kind.__origin__
    value = _as(value, kind, key)
    for bound in bounds:
        if value is not None and not bound.holds(value):
            raise ConfigError(key, f"expected {_noun(kind)} {bound.describe()}, got {value!r}")
    return value


def check_fields(obj) -> None:
    """Coerce and check every field of a dataclass instance in place (frozen ones too)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        object.__setattr__(obj, f.name, coerce(getattr(obj, f.name), hints[f.name], f.name))


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls, include_extras=True)


def _as(value, kind, key: str):
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in args if a is not type(None)]
        if len(arms) < len(args) and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        if len(arms) == 1:
            return coerce(value, arms[0], key)
        for arm in arms:
            try:
                return coerce(value, arm, key)
            except ConfigError as e:
                if _fits(value, arm, key):  # of this arm's type but out of its range: that is the problem
                    raise e from None
        raise ConfigError(key, f"expected {' or '.join(_noun(a) for a in arms)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(key, f"expected one of {', '.join(map(repr, args))}, got {value!r}")
    if origin in (list, tuple) or kind in (list, tuple):
        return _sequence(value, kind, origin or kind, args, key)
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        if args:
            return {coerce(k, args[0], key): coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
        return value
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, kind):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if kind is int:
        return _integer(value, key)
    if kind is float:
        return _number(value, key)
    if kind is str:
        if value is None:
            return ""
        if isinstance(value, (str, os.PathLike)) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return str(value)
        raise ConfigError(key, f"expected a string, got {value!r}")
    return value


def _number(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(key, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(key, f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(key, f"expected a finite number, got {value!r}")
    return number


def _integer(value, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass  # "1e3" and "4.0" are integers written as numbers
    try:
        number = _number(value, key)
    except ConfigError:
        raise ConfigError(key, f"expected an integer, got {value!r}") from None
    if number != int(number):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    return int(number)


def _sequence(value, kind, origin, args, key: str):
    if not isinstance(value, (list, tuple)):
        raise ConfigError(key, f"expected a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(key, f"expected a list of {len(args)} values, got {value!r}")
        items = args
    else:
        items = [args[0] if args else typing.Any] * len(value)
    return origin(coerce(v, t, f"{key}[{i}]") if t is not typing.Any else v
                  for i, (v, t) in enumerate(zip(value, items)))


def _fits(value, kind, key: str) -> bool:
    """Whether `value` has the type of `kind`, its bounds aside."""
    while typing.get_origin(kind) is Annotated:
        kind = kind.__origin__
    try:
        _as(value, kind, key)
    except ConfigError:
        return False
    return True


def _noun(kind) -> str:
    while typing.get_origin(kind) is Annotated:
        kind = kind.__origin__
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_noun(a) for a in typing.get_args(kind) if a is not type(None))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        kind, "a list" if typing.get_origin(kind) in (list, tuple) else getattr(kind, "__name__", str(kind)))
