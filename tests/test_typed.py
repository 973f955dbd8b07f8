"""Recipe and `--set` values as their fields' types."""

import pytest

from angel_dist.typed import coerce


@pytest.mark.parametrize("value, kind, expected", [
    ("3", int, 3), (4.0, int, 4), ("1e-5", float, 1e-5), ("yes", bool, True), ("0", bool, False), (False, bool, False),
    ("none", int | None, None), (None, int | None, None), ("7", int | None, 7), (None, str, ""), (12, str, "12"),
    (["a", "b"], list[str], ["a", "b"]), ("tensorboard, mlflow", list[str], ["tensorboard", "mlflow"]),
    ("2", int | list[int], 2), ([1, "2"], int | list[int], [1, 2]), ("1,2", int | list[int], [1, 2]),
    ("[1, 2]", int | list[int], [1, 2]), ("{train: 1}", dict[str, float], {"train": 1.0}),
    ({"gpu_a": "2"}, dict[str, float], {"gpu_a": 2.0}), ("", dict[str, float], {}),
])
def test_values_become_their_fields_types(value, kind, expected):
    got = coerce(value, kind, "x")
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("value, kind, message", [
    ("maybe", bool, "x: expected true or false"), ("ten", int, "x: expected int"), (2.5, int, "expected an integer"),
    ("fast", float | None, "x: expected float"), ("many", int | list[int], r"x: expected int or list\[int\]"),
    ([1, "b"], list[int], "x: expected int"), ("[a, b]", dict[str, float], "x: expected a mapping"),
    (["a"], str, "x: expected a string"),
])
def test_bad_values_are_refused_with_where_they_came_from(value, kind, message):
    with pytest.raises(ValueError, match=message):
        coerce(value, kind, "x")
