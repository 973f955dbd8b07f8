"""ANGEL's pair rule: which (chosen, rejected) names one mention's top beams yield.

Over the top `topk` beams, each correct (its CUIs meet the gold set) or wrong:
  - beam 1 correct and a wrong beam among them -> (beam 1, the highest-ranked wrong beam);
  - every correct beam at rank k > 1 -> (beam k, w) for each wrong beam w ranked above k;
  - no correct beam -> nothing, or, opted in, the gold name most similar to the mention
    against each of the top wrong beams.
Pure: no model, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Beam:
    name: str
    cuis: frozenset[str]


@dataclass(frozen=True)
class Preference:
    chosen: str
    rejected: str
    chosen_rank: int  # 1-based beam rank; 0 for the gold name of the opt-in rule
    rejected_rank: int
    chosen_cuis: tuple[str, ...]
    rejected_cuis: tuple[str, ...]


def correct(beam: Beam, gold: frozenset[str] | set[str]) -> bool:
    return bool(beam.cuis & gold)


def preferences(beams: Sequence[Beam], gold: set[str] | frozenset[str], topk: int = 5,
                gold_name: str | None = None) -> list[Preference]:
    """The pairs of one mention; `beams` best first. `gold_name` turns on the no-correct-beam rule."""
    if topk < 1:
        raise ValueError("topk must be >= 1")
    gold = frozenset(gold)
    top = list(beams[:topk])
    ok = [correct(b, gold) for b in top]

    def pair(c: int, w: int) -> Preference:
        return Preference(top[c].name, top[w].name, c + 1, w + 1, tuple(sorted(top[c].cuis)),
                          tuple(sorted(top[w].cuis)))

    if not any(ok):
        if gold_name is None:
            return []
        return [Preference(gold_name, b.name, 0, r + 1, tuple(sorted(gold)), tuple(sorted(b.cuis)))
                for r, b in enumerate(top)]
    out = []
    if ok[0]:
        wrong = next((w for w in range(len(top)) if not ok[w]), None)
        if wrong is not None:
            out.append(pair(0, wrong))
    for k in range(1, len(top)):
        if ok[k]:
            out += [pair(k, w) for w in range(k) if not ok[w]]
    return out
