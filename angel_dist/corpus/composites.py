"""Composite mentions (one span naming several concepts: "breast or ovarian cancer") handled as
GenBioEL handles them: NCBI-disease's are dropped from training; BC5CDR's, whose 7th column
lists the individual mentions, are split into one mention per concept.

GenBioEL splits a BC5CDR composite (several ids, individual mentions in column 7) three ways:
the individual mentions joined by spaces are the span ("Hemorrhagic|cystitis"); else, with two
ids, the span cut at " and " or at " or " ("sagittal and left transverse sinus thrombosis" ->
"sagittal", "left transverse sinus thrombosis"); any other composite is dropped.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from angel_dist.corpus.pubtator import Mention
from angel_dist.gold import gold_concepts

Composites = Literal["keep", "drop", "split"]


def is_composite(m: Mention) -> bool:
    return len(gold_concepts(m.ids)) > 1


def split_composite(m: Mention) -> list[Mention] | None:
    """The individual mentions of BC5CDR composite `m` (itself when it is not one), or None
    when GenBioEL's rules do not split it."""
    if not m.parts or "|" not in m.ids:
        return [m]
    ids, parts = m.ids.split("|"), m.parts.split("|")
    if " ".join(parts) == m.text:
        pieces = parts
        gap = 1
    elif len(parts) == 2 and " and " in m.text:
        pieces, gap = m.text.split(" and "), len(" and ")
    elif len(parts) == 2 and " or " in m.text:
        pieces, gap = m.text.split(" or "), len(" or ")
    else:
        return None
    out, offset = [], 0
    for piece, cid in zip(pieces, ids):
        start = m.start + offset
        out.append(replace(m, start=start, end=start + len(piece), text=piece, ids=cid, parts=""))
        offset += len(piece) + gap
    return out
