"""GenBioEL's KB-guided pretraining examples: one per (concept, synonym).

The target is the synonym; the mention is another synonym of the same concept (`random`, as
GenBioEL's released data, or `most_sim` by character TF-IDF), itself when the concept has only
one. The pool is the concept's synonyms without the target: the mention comes from it and so
does the context, so the target is never written in its own input (a concept with one name is
the exception: its only name is mention, context and target). The input wraps the mention in
START/END and puts it beside the concept's definitions or synonyms with one of these templates
(chosen at random, like the form):

  definitions      prefix form  START m END {is defined as | is described as} <defs>
                   suffix form  <defs> {are the definitions of | describe} START m END
                   (defs: two of the concept's definitions, lowercased, " "-joined; one if it has one)
  >= 2 synonyms    prefix form  START m END {has synonyms, such as | refers to the same concept as} <ctx>
                   suffix form  <ctx> {are the synonyms of | indicate the same concept as} START m END
                   (ctx: up to 3 of the pool, ", "-joined; the mention may be among them)
  one synonym      prefix form  START m END {is | is the same as} m
                   suffix form  m {is | is the same as} START m END

Every choice is drawn from a stream seeded by (seed, concept id), so an example does not
depend on which shard or worker builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np
import pyarrow as pa

from angel_dist.corpus.example import Example, mark
from angel_dist.corpus.similarity import CharTfidf, most_similar_other
from angel_dist.keys import key_part, rng_for
from angel_dist.typed import check_fields

MentionScheme = Literal["random", "most_sim"]

TEMPLATES = {
    ("definition", "prefix"): ("is defined as", "is described as"),
    ("definition", "suffix"): ("are the definitions of", "describe"),
    ("synonyms", "prefix"): ("has synonyms, such as", "refers to the same concept as"),
    ("synonyms", "suffix"): ("are the synonyms of", "indicate the same concept as"),
    ("self", "prefix"): ("is", "is the same as"),
    ("self", "suffix"): ("is", "is the same as"),
}
MAX_DEFINITIONS = 2
MAX_CONTEXT_SYNONYMS = 3


@dataclass(frozen=True)
class KbExampleConfig:
    mention_scheme: MentionScheme = "random"
    seed: int = 0

    def __post_init__(self):
        check_fields(self)


def _sample(rng, items: list[str], n: int) -> list[str]:
    """n distinct items in a random order, using only rng.random()."""
    keys = [rng.random() for _ in items]
    order = sorted(range(len(items)), key=keys.__getitem__)
    return [items[i] for i in order[:n]]


def _choice(rng, options):
    return options[min(int(rng.random() * len(options)), len(options) - 1)]


def concept_examples(cui: str, names: list[str], definitions: list[str], mentions: list[int],
                     seed: int) -> Iterator[Example]:
    """The examples of one concept; `mentions[j]` is the index of synonym j's mention (another
    synonym than j when the concept has two or more)."""
    rng = rng_for(seed, "kb", cui)
    # GenBioEL lowercases definitions as it reads them (names are lowercased by normalization).
    defs = list(dict.fromkeys(d.strip().lower() for d in definitions if d and d.strip()))
    for j, target in enumerate(names):
        mention = names[mentions[j]]
        form = _choice(rng, ("prefix", "suffix"))
        if defs:
            family = "definition"
            context = " ".join(_sample(rng, defs, MAX_DEFINITIONS))
        elif len(names) > 1:
            family = "synonyms"
            pool = names[:j] + names[j + 1:]
            context = ", ".join(_sample(rng, pool, MAX_CONTEXT_SYNONYMS))
        else:
            family, context = "self", mention
        template = _choice(rng, TEMPLATES[(family, form)])
        if form == "prefix":
            source, span = mark("", mention, f"{template} {context}")
        else:
            source, span = mark(f"{context} {template}", mention, "")
        yield Example(key=f"kb-{key_part(cui)}-{j}", group=cui, source=source, prefix=f"{mention} is",
                      target=target, cuis=[cui], kind="kb", mention_span=span,
                      keep="head" if form == "prefix" else "tail",
                      meta={"template": template, "form": form, "family": family})


def choose_mentions(names: list[str], offsets: np.ndarray, config: KbExampleConfig,
                    tfidf: CharTfidf | None, cuis: list[str]) -> np.ndarray:
    """Index (into `names`) of the mention of every flattened synonym."""
    if config.mention_scheme == "most_sim":
        if tfidf is None:
            raise ValueError("the most_sim mention scheme needs a fitted CharTfidf")
        best = most_similar_other(tfidf.transform(names), offsets)
    else:
        best = np.full(len(names), -1, dtype=np.int64)
        for g, cui in enumerate(cuis):
            lo, hi = int(offsets[g]), int(offsets[g + 1])
            rng = rng_for(config.seed, "mention", cui)
            for j in range(lo, hi):
                if hi - lo > 1:
                    pick = lo + min(int(rng.random() * (hi - lo - 1)), hi - lo - 2)
                    best[j] = pick + (pick >= j)
    alone = best < 0
    best[alone] = np.arange(len(names))[alone]
    return best


def kb_examples(table: pa.Table, config: KbExampleConfig, tfidf: CharTfidf | None) -> Iterator[Example]:
    """Examples of every concept of a KB table slice (columns cui, names, definitions)."""
    cuis = table["cui"].to_pylist()
    names_col = table["names"].combine_chunks()
    names = names_col.flatten().to_pylist()
    offsets = np.asarray(names_col.offsets)
    offsets = offsets - offsets[0]
    mention_rows = choose_mentions(names, offsets, config, tfidf, cuis)
    definitions = table["definitions"].to_pylist()
    for g, cui in enumerate(cuis):
        lo, hi = int(offsets[g]), int(offsets[g + 1])
        if hi == lo:
            continue
        yield from concept_examples(cui, names[lo:hi], definitions[g] or [], (mention_rows[lo:hi] - lo).tolist(),
                                    config.seed)
