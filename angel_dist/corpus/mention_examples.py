"""Benchmark mentions -> examples: a context window with START/END, `mention is`, gold CUIs.

Training sets use SYN-k: each mention yields up to k rows whose targets are the k names of
its gold concepts most similar to the mention (character TF-IDF). Evaluation sets
(`syn_k=None`) yield one row per mention with an empty target. Mentions are counted when
dropped: BC5CDR's unlinked `-1`, another entity type than asked for, and, for training,
gold concepts all missing from the KB (evaluation keeps those: they count as misses).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Iterable, Literal, Sequence

import numpy as np
import pyarrow as pa

from angel_dist.corpus.example import Example, mark
from angel_dist.corpus.pubtator import Document, Mention
from angel_dist.corpus.sentences import sentence_spans, window
from angel_dist.corpus.similarity import CharTfidf, top_k_per_query
from angel_dist.gold import canonical_id, gold_concepts
from angel_dist.kb.normalize import normalize_names
from angel_dist.keys import key_part

Context = Literal["sentence", "document"]


@dataclass(frozen=True)
class MentionExampleConfig:
    context: Context = "sentence"
    entity_type: str | None = None  # keep only mentions of this type (BC5CDR: Disease, Chemical)
    syn_k: int | None = 3  # None: evaluation-only examples without targets

    def __post_init__(self):
        if self.context not in ("sentence", "document"):
            raise ValueError(f"context must be 'sentence' or 'document', got {self.context!r}")
        if self.syn_k is not None and self.syn_k < 1:
            raise ValueError(f"syn_k must be >= 1, got {self.syn_k}")


class KbIndex:
    """Concept ids (and alternative ids) of a KB table -> that concept's names."""

    def __init__(self, table: pa.Table):
        names = table["names"].to_pylist()
        self._names: dict[str, list[str]] = {}
        alts = table["alt_ids"].to_pylist() if "alt_ids" in table.column_names else [[]] * table.num_rows
        for cui, alt, ns in zip(table["cui"].to_pylist(), alts, names):
            self._names.setdefault(canonical_id(cui), ns)
        for alt, ns in zip(alts, names):
            for a in alt or ():
                self._names.setdefault(canonical_id(a), ns)

    def names(self, cid: str) -> list[str] | None:
        return self._names.get(cid)


def mention_inputs(doc: Document, mentions: Sequence[Mention], context: Context = "sentence") -> list[Example]:
    """The model input of each of `mentions` (spans of `doc.text`): its context window with the
    mention marked `START ... END`, whitespace collapsed, and the forced prefix `<mention> is`.

    The one place a (document, span) becomes model input: benchmark corpora, `angel link`,
    `angel annotate` and `angel serve` all call it, so a model links text exactly as it was
    trained on it. Key, group, gold ids and meta are left for the caller."""
    text = doc.text
    spans = sentence_spans(text, hard_breaks=(len(doc.title),)) if context == "sentence" else None
    out = []
    for m in mentions:
        lo, hi = window(spans, m.start, m.end) if spans is not None else (0, len(text))
        mention = " ".join(text[m.start:m.end].split())
        source, span = mark(" ".join(text[lo:m.start].split()), mention, " ".join(text[m.end:hi].split()))
        out.append(Example(key="", group="", source=source, prefix=f"{mention} is", target="", cuis=[],
                           kind="mention", mention_span=span, keep="around"))
    return out


def mention_examples(documents: Iterable[Document], kb: KbIndex, tfidf: CharTfidf,
                     config: MentionExampleConfig) -> tuple[list[Example], Counter]:
    counts: Counter = Counter()
    rows: list[tuple[Example, list[str]]] = []  # example without target, its candidate names
    for doc in documents:
        counts["documents"] += 1
        kept = []  # (index in the document, mention, gold ids)
        for i, m in enumerate(doc.mentions):
            counts["mentions_read"] += 1
            if config.entity_type and m.type != config.entity_type:
                counts["other_entity_type"] += 1
                continue
            gold = gold_concepts(m.ids)
            if not gold:
                counts["unlinked_dropped"] += 1
                continue
            kept.append((i, m, gold))
        for (i, m, gold), example in zip(kept, mention_inputs(doc, [m for _, m, _ in kept], config.context)):
            candidates = list(dict.fromkeys(n for g in gold for n in (kb.names(g) or ())))
            if not candidates:
                counts["gold_missing_from_kb"] += 1
            example = replace(example, key=f"m-{key_part(doc.pmid)}-{i:04d}", group=f"{doc.pmid}/{i}", cuis=gold,
                              meta={"document": doc.pmid, "start": m.start, "end": m.end, "type": m.type,
                                    "mention": m.text, "line": m.line})
            rows.append((example, candidates))
    if config.syn_k is None:
        counts["examples"] = len(rows)
        counts["mentions_kept"] = len(rows)
        return [e for e, _ in rows], counts
    trainable = [(e, c) for e, c in rows if c]
    counts["mentions_kept"] = len(trainable)
    queries = normalize_names(pa.array([e.meta["mention"] for e, _ in trainable], pa.string())).to_pylist()
    flat = [n for _, c in trainable for n in c]
    offsets = np.concatenate([[0], np.cumsum([len(c) for _, c in trainable])]).astype(np.int64)
    ranked = top_k_per_query(tfidf.transform(queries), tfidf.transform(flat), offsets, config.syn_k) \
        if trainable else []
    examples = []
    for (example, candidates), best in zip(trainable, ranked):
        for r, idx in enumerate(best):
            examples.append(Example(**{**example.__dict__, "key": f"{example.key}-s{r}", "target": candidates[idx],
                                       "meta": {**example.meta, "syn_rank": r}}))
    counts["examples"] = len(examples)
    return examples, counts
