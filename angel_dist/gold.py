"""Gold concept ids as benchmarks write them, matched against KB ids."""

from __future__ import annotations

import re

_SPLIT = re.compile(r"[|+]")
# Benchmarks and KBs disagree on namespace prefixes for the same id (MedMentions writes
# UMLS:C0010674, MEDIC-derived files write MESH:D003920 or plain D003920).
_DROP_PREFIXES = ("UMLS:", "MESH:", "MeSH:")


def canonical_id(cid: str) -> str:
    cid = cid.strip()
    for prefix in _DROP_PREFIXES:
        if cid.startswith(prefix):
            return cid[len(prefix):]
    return cid


def split_gold(ids: str) -> list[str]:
    """`D001|D002+OMIM:3` -> ["D001", "D002", "OMIM:3"]: composite parts and alternatives alike."""
    out = []
    for part in _SPLIT.split(ids):
        cid = canonical_id(part)
        if cid and cid not in out:
            out.append(cid)
    return out


def gold_concepts(ids: str) -> list[str]:
    """The gold concepts of a mention's id column: `split_gold` without BC5CDR's `-1` (unlinked);
    empty when the mention has none."""
    return [g for g in split_gold(ids) if g != "-1"]
