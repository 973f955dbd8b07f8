"""Benchmark mentions -> examples: a context window with START/END, `mention is`, gold CUIs.

Inputs are prepared as GenBioEL prepares NCBI-disease and BC5CDR (every step a setting of
`MentionInputConfig`, on by default): the mention is written with the long forms of the
abbreviations its document defines (Schwartz–Hearst; GenBioEL runs Ab3P) and normalized exactly
like KB names (angel_dist/kb/normalize.py), both in the forced prefix and between START and END,
so that the model copies what it can instead of learning case and punctuation; the context is
lowercased; it is the document (title + abstract) around the mention, at most
DOCUMENT_WINDOW_WORDS words (GenBioEL's window), or, with `context: sentence`, its sentence.
HTML character references (`&amp;`, `&gt;`) read as the characters they stand for, always (GenBioEL's
html.unescape): no model should learn to link `&amp;`.

Training sets use SYN-k: each mention yields up to k rows whose targets are the k names of
its gold concepts most similar to the mention (character TF-IDF). Evaluation sets
(`syn_k=None`) yield one row per mention with an empty target. Mentions are counted when
dropped: BC5CDR's unlinked `-1`, another entity type than asked for, composites dropped or not
split (`composites`), and, for training, gold concepts all missing from the KB (evaluation keeps
those: they count as misses).
"""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from typing import Iterable, Literal, Sequence

import numpy as np
import pyarrow as pa

from angel_dist.corpus.abbreviations import document_abbreviations, expand
from angel_dist.corpus.composites import Composites, split_composite
from angel_dist.corpus.example import Example, mark
from angel_dist.corpus.pubtator import Document, Mention
from angel_dist.corpus.sentences import sentence_spans, window
from angel_dist.corpus.similarity import CharTfidf, top_k_per_query
from angel_dist.gold import canonical_id, gold_concepts
from angel_dist.kb.normalize import normalize_names
from angel_dist.keys import key_part
from angel_dist.typed import PositiveInt, check_fields

Context = Literal["sentence", "document"]
CONTEXTS = ("sentence", "document")
DOCUMENT_WINDOW_WORDS = 384  # GenBioEL's create_input: the whole document up to this, else a window


@dataclass(frozen=True)
class MentionInputConfig:
    """How a (document, mention span) becomes model input; a bundle records it."""
    context: Context = "document"
    lowercase: bool = True  # the context, as GenBioEL
    normalize_mention: bool = True  # the mention as KB names are normalized
    abbreviations: bool = True  # mentions written with the long forms their document defines

    def __post_init__(self):
        if self.context not in CONTEXTS:
            raise ValueError(f"context must be 'sentence' or 'document', got {self.context!r}")

    @classmethod
    def from_record(cls, record: dict) -> "MentionInputConfig":
        """The settings a bundle, shard set or recipe recorded. Those made before the switches
        existed made raw inputs from the sentence: missing keys read that way."""
        return cls(context=record.get("context", "sentence"),
                   **{f.name: bool(record.get(f.name, False)) for f in fields(cls) if f.name != "context"})


def describe_inputs(record: dict) -> str:
    """Recorded input settings in words (a bundle's card)."""
    c = MentionInputConfig.from_record(record)
    mention = [w for on, w in ((c.abbreviations, "abbreviations expanded"),
                               (c.normalize_mention, "normalized like KB names")) if on]
    return (f"the {c.context} around the mention{' (lowercased)' if c.lowercase else ''}; the mention "
            + (", ".join(mention) if mention else "as written"))


@dataclass(frozen=True)
class MentionExampleConfig:
    inputs: MentionInputConfig = field(default_factory=MentionInputConfig)
    entity_type: str | None = None  # keep only mentions of this type (BC5CDR: Disease, Chemical)
    syn_k: PositiveInt | None = 3  # None: evaluation-only examples without targets
    # Composite mentions: "drop" from training sets (NCBI-disease in GenBioEL; evaluation sets
    # keep them), "split" in every set by BC5CDR's 7th column (angel_dist/corpus/composites.py).
    composites: Composites = "keep"

    def __post_init__(self):
        check_fields(self)


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


def _word_window(words: np.ndarray, start: int, end: int, limit: int) -> tuple[int, int]:
    """GenBioEL's document window over a text whose words span `words` ([n, 2] character
    offsets): the whole text when it has at most `limit` words; else the mention with as much
    context on each side as the other side leaves, half of `limit` each at least."""
    n = len(words)
    if n <= limit:
        return 0, int(words[-1, 1]) if n else end
    before = int(np.searchsorted(words[:, 1], start, side="right"))  # words wholly left of the mention
    after = n - int(np.searchsorted(words[:, 0], end, side="left"))
    half = limit // 2
    left = min(before, limit - after if after <= half else half)
    right = min(after, limit - before if before <= half else half)
    lo = int(words[before - left, 0]) if left > 0 else start
    hi = int(words[n - after + right - 1, 1]) if right > 0 else end
    return min(lo, start), max(hi, end)


def mention_inputs(doc: Document, mentions: Sequence[Mention],
                   config: MentionInputConfig = MentionInputConfig()) -> list[Example]:
    """The model input of each of `mentions` (spans of `doc.text`): its context window with the
    mention marked `START ... END`, whitespace collapsed, and the forced prefix `<mention> is`.

    The one place a (document, span) becomes model input: benchmark corpora, `angel link`,
    `angel annotate` and `angel serve` all call it, so a model links text exactly as it was
    trained on it. Key, group and gold ids are left for the caller; `meta["expanded"]` tells a
    mention written with an abbreviation's long form."""
    text = doc.text
    if config.context == "sentence":
        spans = sentence_spans(text, hard_breaks=(len(doc.title),))
    else:
        words = np.array([m.span() for m in re.finditer(r"\S+", text)], dtype=np.int64).reshape(-1, 2)
    abbreviations = document_abbreviations(text) if config.abbreviations else {}
    raw = [" ".join(html.unescape(text[m.start:m.end]).split()) for m in mentions]
    expanded = [expand(r, abbreviations) for r in raw]
    written = expanded
    if config.normalize_mention:
        normalized = normalize_names(pa.array(written, pa.string())).to_pylist()
        # A mention of punctuation alone normalizes to nothing: it keeps its written form.
        written = [n or w for n, w in zip(normalized, expanded)]
    out = []
    for m, r, e, mention in zip(mentions, raw, expanded, written):
        if config.context == "sentence":
            lo, hi = window(spans, m.start, m.end)
        else:
            lo, hi = _word_window(words, m.start, m.end, DOCUMENT_WINDOW_WORDS)
        left, right = html.unescape(text[lo:m.start]), html.unescape(text[m.end:hi])
        if config.lowercase:
            left, right = left.lower(), right.lower()
        source, span = mark(" ".join(left.split()), mention, " ".join(right.split()))
        out.append(Example(key="", group="", source=source, prefix=f"{mention} is", target="", cuis=[],
                           kind="mention", mention_span=span, keep="around",
                           meta={"expanded": True} if e != r else {}))
    return out


def mention_examples(documents: Iterable[Document], kb: KbIndex, tfidf: CharTfidf,
                     config: MentionExampleConfig) -> tuple[list[Example], Counter]:
    counts: Counter = Counter()
    rows: list[tuple[Example, list[str]]] = []  # example without target, its candidate names
    for doc in documents:
        counts["documents"] += 1
        kept = []  # (index in the document and of the split part, mention, gold ids)
        for i, m in enumerate(doc.mentions):
            counts["mentions_read"] += 1
            if config.entity_type and m.type != config.entity_type:
                counts["other_entity_type"] += 1
                continue
            parts = split_composite(m) if config.composites == "split" else [m]
            if parts is None:
                counts["composites_dropped"] += 1
                continue
            if len(parts) > 1:
                counts["composites_split"] += 1
            for j, part in enumerate(parts):
                gold = gold_concepts(part.ids)
                if not gold:
                    counts["unlinked_dropped"] += 1
                elif config.composites == "drop" and config.syn_k is not None and len(gold) > 1:
                    counts["composites_dropped"] += 1
                else:
                    kept.append(((i, j if len(parts) > 1 else None), part, gold))
        for ((i, j), m, gold), example in zip(kept, mention_inputs(doc, [m for _, m, _ in kept], config.inputs)):
            candidates = list(dict.fromkeys(n for g in gold for n in (kb.names(g) or ())))
            if not candidates:
                counts["gold_missing_from_kb"] += 1
            if example.meta.get("expanded"):
                counts["abbreviations_expanded"] += 1
            part = "" if j is None else f"-{j}"
            example = replace(example, key=f"m-{key_part(doc.pmid)}-{i:04d}{part}", group=f"{doc.pmid}/{i}{part}",
                              cuis=gold, meta={**example.meta, "document": doc.pmid, "start": m.start,
                                               "end": m.end, "type": m.type, "mention": m.text, "line": m.line})
            rows.append((example, candidates))
    if config.syn_k is None:
        counts["examples"] = len(rows)
        counts["mentions_kept"] = len(rows)
        return [e for e, _ in rows], counts
    trainable = [(e, c) for e, c in rows if c]
    counts["mentions_kept"] = len(trainable)
    # Targets are the gold names most similar to the mention as the input writes it (expanded).
    queries = normalize_names(pa.array([e.prefix[: -len(" is")] for e, _ in trainable], pa.string())).to_pylist()
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
