"""Recipe and `--set` values as their fields' types, bounds and choices."""

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import pytest

from angel_dist.typed import ConfigError, PositiveInt, Range, Share, check_fields, coerce


@pytest.mark.parametrize("value, kind, expected", [
    ("3", int, 3), (4.0, int, 4), ("1e3", int, 1000), ("1e-5", float, 1e-5), ("yes", bool, True), ("0", bool, False),
    (False, bool, False), ("none", int | None, None), (None, int | None, None), ("7", int | None, 7), (None, str, ""),
    (12, str, "12"), (Path("a/b"), str, "a/b"), (["a", "b"], list[str], ["a", "b"]), ([1, "2"], tuple[int, ...], (1, 2)),
    ("obo", Literal["obo", "medic"], "obo"), ("1", PositiveInt, 1), (1, Share, 1.0), ({"a": 1}, dict, {"a": 1}),
    ([2, 3], int | list[int], [2, 3]), (2, int | list[int], 2), ({"train": "1"}, dict[str, float], {"train": 1.0}),
])
def test_values_become_their_fields_types(value, kind, expected):
    got = coerce(value, kind, "x")
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("value, kind, message", [
    ("maybe", bool, "x: expected true or false"), ("ten", int, "x: expected an integer, got 'ten'"),
    (2.5, int, "expected an integer"), (True, int, "expected an integer"), ("fast", float | None, "x: expected a number"),
    (["a", "b"], str, r"x: expected a string, got \['a', 'b'\]"), ({"k": 1}, str, "expected a string"),
    ([1], int, "expected an integer"), ({"k": 1}, float, "expected a number"), (["a"], dict, "expected a mapping"),
    (float("nan"), float, "expected a finite number"), ("inf", float, "expected a finite number"),
    ("-inf", float | None, "expected a finite number"), ("a", list[str], "expected a list"),
    (["a", [1]], list[str], r"x\[1\]: expected a string"), ([1], tuple[int, int], "expected a list of 2 values"),
    ("xml", Literal["obo", "medic"], "x: expected one of 'obo', 'medic', got 'xml'"),
    (0, PositiveInt, "x: expected an integer >= 1, got 0"), (0, Share, r"expected a number in \(0, 1\], got 0.0"),
    (1.0, Annotated[float, Range(ge=0, lt=1)], r"in \[0, 1\), got 1.0"), (-1, Annotated[int, Range(le=-2)], "<= -2"),
    ("x", int | list[int], "x: expected an integer or a list"), ({"gpu": "a"}, dict[str, float], "x.gpu: expected a number"),
])
def test_bad_values_are_refused_with_where_they_came_from(value, kind, message):
    with pytest.raises(ConfigError, match=message):
        coerce(value, kind, "x")


def test_a_dataclass_checks_its_own_fields():
    @dataclass(frozen=True)
    class Config:
        n: PositiveInt = 1
        share: Share | None = None

        def __post_init__(self):
            check_fields(self)

    assert Config(n="3", share="0.5") == Config(3, 0.5)
    with pytest.raises(ConfigError, match="share: expected a number in") as err:
        Config(share=2)
    assert err.value.key == "share" and str(err.value.within("section")).startswith("section.share: ")
