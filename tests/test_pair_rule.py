"""ANGEL's pair rule, case by case (DESIGN.md)."""

import pytest

from angel_dist.pairs import Beam, preferences

GOLD = {"C1"}


def _beams(spec: str) -> list[Beam]:
    """'cwwc' -> beams named c1, w2, w3, c4 (correct: CUI C1; wrong: their own CUI)."""
    return [Beam(f"{k}{r}", frozenset({"C1"} if k == "c" else {f"X{r}"})) for r, k in enumerate(spec, 1)]


def _pairs(spec: str, topk: int = 5, gold_name: str | None = None) -> list[tuple[str, str, int, int]]:
    return [(p.chosen, p.rejected, p.chosen_rank, p.rejected_rank)
            for p in preferences(_beams(spec), GOLD, topk, gold_name)]


@pytest.mark.parametrize("spec, expected", [
    # top-1 correct, a wrong beam in the top 5: (beam 1, the highest-ranked wrong beam)
    ("cwcww", [("c1", "w2", 1, 2), ("c3", "w2", 3, 2)]),
    ("ccwww", [("c1", "w3", 1, 3)]),
    # top-1 correct and no wrong beam in the top 5: nothing
    ("ccccc", []),
    # a correct beam at rank k > 1 behind several wrong ones: one pair per wrong beam above it
    ("wwwcw", [("c4", "w1", 4, 1), ("c4", "w2", 4, 2), ("c4", "w3", 4, 3)]),
    ("wcwcw", [("c2", "w1", 2, 1), ("c4", "w1", 4, 1), ("c4", "w3", 4, 3)]),
    # no correct beam: nothing by default
    ("wwwww", []),
    # beams beyond dpo_topk do not count
    ("wwwwwc", []),
])
def test_rule(spec, expected):
    assert _pairs(spec) == expected


def test_topk_limits_the_beams_looked_at():
    assert _pairs("wwc", topk=2) == []
    assert _pairs("wwc", topk=3) == [("c3", "w1", 3, 1), ("c3", "w2", 3, 2)]


def test_opt_in_gold_name_when_no_beam_is_correct():
    assert _pairs("wwwwww", gold_name="gold") == [("gold", f"w{r}", 0, r) for r in range(1, 6)]
    # with a correct beam the gold name is not used
    assert _pairs("wcwww", gold_name="gold") == [("c2", "w1", 2, 1)]


def test_a_beam_is_correct_when_any_of_its_cuis_is_gold():
    beams = [Beam("a", frozenset({"X", "Y"})), Beam("b", frozenset({"Z", "C1"}))]
    [p] = preferences(beams, {"C1", "C9"})
    assert (p.chosen, p.rejected, p.chosen_cuis, p.rejected_cuis) == ("b", "a", ("C1", "Z"), ("X", "Y"))


def test_topk_must_be_positive():
    with pytest.raises(ValueError):
        preferences(_beams("c"), GOLD, topk=0)
