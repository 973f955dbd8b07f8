"""Recipe and `--set` values as their fields' types."""

import pytest

from angel_dist.typed import coerce


@pytest.mark.parametrize("value, kind, expected", [
    ("3", int, 3), (4.0, int, 4), ("1e-5", float, 1e-5), ("yes", bool, True), ("0", bool, False), (False, bool, False),
    ("none", int | None, None), (None, int | None, None), ("7", int | None, 7), (None, str, ""), (12, str, "12"),
    (["a", "b"], list[str], ["a", "b"]),
])
def test_values_become_their_fields_types(value, kind, expected):
    got = coerce(value, kind, "x")
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("value, kind, message", [
    ("maybe", bool, "x: expected true or false"), ("ten", int, "x: expected int"), (2.5, int, "expected an integer"),
    ("fast", float | None, "x: expected float"),
])
def test_bad_values_are_refused_with_where_they_came_from(value, kind, message):
    with pytest.raises(ValueError, match=message):
        coerce(value, kind, "x")
