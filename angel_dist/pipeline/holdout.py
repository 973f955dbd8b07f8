"""The demo's held-out synonyms: (concept, synonym) pairs taken out of the KB and written as
PubTator files, so the model must map a synonym it never saw to one of its concept's remaining
names (it cannot copy it: the name is in neither the trie nor the corpus).

A pair is held out when a hash of (seed, concept, synonym) falls under `fraction`; never a
concept's first (preferred) name, never a name another concept also carries. Another hash
bit sends it to dev or test. Pure: a KB table in, a KB table and two lists out.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa

from angel_dist.atomic import atomic_path
from angel_dist.keys import stable_hash64


def hold_out(kb: pa.Table, fraction: float, seed: int = 0) -> tuple[pa.Table, list[tuple[str, str]],
                                                                     list[tuple[str, str]]]:
    """(the KB without the held-out names, dev (cui, synonym) pairs, test pairs)."""
    cuis, names = kb["cui"].to_pylist(), kb["names"].to_pylist()
    owners = Counter(n for ns in names for n in set(ns))
    kept, dev, test = [], [], []
    for cui, ns in zip(cuis, names):
        keep = [ns[0]] if ns else []
        for name in ns[1:]:
            draw = stable_hash64(f"{cui}\x1f{name}", seed)
            if owners[name] == 1 and (draw >> 1) / 2.0 ** 63 < fraction:
                (dev if draw & 1 else test).append((cui, name))
            else:
                keep.append(name)
        kept.append(keep)
    column = kb.schema.get_field_index("names")
    table = kb.set_column(column, kb.schema.field("names"), pa.array(kept, type=kb.schema.field("names").type))
    return table, dev, test


def write_pubtator(pairs: list[tuple[str, str]], path: str | Path, entity_type: str = "Phenotype") -> Path:
    """One document per pair: the synonym is the title and its one mention, the concept its gold id."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for i, (cui, name) in enumerate(pairs):
                doc = f"holdout{i:06d}"
                f.write(f"{doc}|t|{name}\n{doc}|a|\n{doc}\t0\t{len(name)}\t{name}\t{entity_type}\t{cui}\n\n")
    return Path(path)
