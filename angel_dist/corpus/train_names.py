"""Training mentions as KB synonyms: the protocol of GenBioEL's and ANGEL's benchmark numbers,
whose target KBs add each training mention's string to its gold concept (BioSyn's training
dictionaries). Only the training split's mentions: a dev or test mention in the KB would hand
the model its answer.

A mention's string is written as the model reads it (abbreviations expanded, normalized like KB
names: `mention_inputs`), then normalized like KB names whatever the input settings, and added
after the concept's own names (its preferred name stays first). A mention of several concepts
(a composite not split) names none of them alone and adds nothing.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import pyarrow as pa

from angel_dist.corpus.composites import Composites, split_composite
from angel_dist.corpus.mention_examples import MentionInputConfig, mention_inputs
from angel_dist.corpus.pubtator import Document
from angel_dist.gold import canonical_id, gold_concepts
from angel_dist.kb.normalize import normalize_names


def mention_names(documents: Iterable[Document], inputs: MentionInputConfig, entity_type: str | None = None,
                  composites: Composites = "keep") -> list[tuple[str, str]]:
    """(gold concept id, the mention's string) of every linked mention of one concept."""
    out = []
    for doc in documents:
        mentions = []
        for m in doc.mentions:
            if entity_type and m.type != entity_type:
                continue
            mentions += (split_composite(m) or []) if composites == "split" else [m]
        mentions = [m for m in mentions if len(gold_concepts(m.ids)) == 1]
        written = [e.prefix[: -len(" is")] for e in mention_inputs(doc, mentions, inputs)]
        out += [(gold_concepts(m.ids)[0], w) for m, w in zip(mentions, written)]
    return out


def add_names(table: pa.Table, pairs: list[tuple[str, str]]) -> tuple[pa.Table, Counter]:
    """`table` with each (concept id, name) of `pairs` among its concept's names (found by id or
    alternative id); counts of names added and of mentions whose concept the KB lacks."""
    counts: Counter = Counter()
    row_of: dict[str, int] = {}
    alts = table["alt_ids"].to_pylist() if "alt_ids" in table.column_names else [[]] * table.num_rows
    for i, cui in enumerate(table["cui"].to_pylist()):
        row_of.setdefault(canonical_id(cui), i)
    for i, alt in enumerate(alts):
        for a in alt or ():
            row_of.setdefault(canonical_id(a), i)
    names = table["names"].to_pylist()
    normalized = normalize_names(pa.array([n for _, n in pairs], pa.string())).to_pylist()
    for (cid, _), name in zip(pairs, normalized):
        row = row_of.get(cid)
        if row is None:
            counts["train_mentions_missing_from_kb"] += 1
        elif name and name not in names[row]:
            names[row].append(name)
            counts["train_names_added"] += 1
    column = table.schema.get_field_index("names")
    field = table.schema.field("names")
    return table.set_column(column, field, pa.array(names, type=field.type)), counts
