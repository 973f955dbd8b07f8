"""Examples -> token ids: the encoder input (capped), the forced prefix and the target.

  source_ids  <s> tok(source) </s> (no <s> for a tokenizer without a bos), at most
              `max_source_tokens` in all; an over-long source keeps its head (prefix-form
              templates), its tail (suffix forms) or a window around the mention (benchmark
              contexts), and its text is cut to match
  prefix_ids  tok(" " + prefix)                 e.g. " aspirin is"
  target_ids  tok(" " + target) + [eos]         the trie's form of a KB name; empty without a target

The decoder sequence of training is [decoder_start] + prefix_ids + target_ids; a causal model's
row is source_ids[:-1] + prefix_ids + target_ids (angel_dist/model/family.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from angel_dist.corpus.example import Example

MAX_SOURCE_TOKENS = 700


@dataclass
class Encoded:
    example: Example
    source_ids: np.ndarray
    prefix_ids: np.ndarray
    target_ids: np.ndarray


def _truncate(example: Example, ids: list[int], offsets: list[tuple[int, int]], budget: int):
    """Keep `budget` content tokens; returns (ids, the source text cut to them, the new span)."""
    n = len(ids)
    if example.keep == "head":
        lo, hi = 0, budget
    elif example.keep == "tail":
        lo, hi = n - budget, n
    else:
        centre = next((t for t, (s, e) in enumerate(offsets) if e > example.mention_span[0]), 0)
        lo = max(0, min(centre - budget // 2, n - budget))
        hi = lo + budget
    cut_lo = offsets[lo][0] if lo > 0 else 0
    cut_hi = offsets[hi - 1][1] if hi < n else len(example.source)
    source = example.source[cut_lo:cut_hi]
    span = (max(example.mention_span[0] - cut_lo, 0), max(min(example.mention_span[1], cut_hi) - cut_lo, 0))
    return ids[lo:hi], replace(example, source=source, mention_span=span)


def encode_examples(examples: list[Example], tokenizer, max_source_tokens: int = MAX_SOURCE_TOKENS) -> list[Encoded]:
    backend = tokenizer.backend_tokenizer
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer needs an eos token (BART's </s>): it ends every source and name")
    head = [] if bos is None else [bos]  # some causal LMs' tokenizers (Qwen's) have no bos
    budget = max_source_tokens - len(head) - 1
    sources = backend.encode_batch([e.source for e in examples], add_special_tokens=False)
    prefixes = backend.encode_batch([" " + e.prefix for e in examples], add_special_tokens=False)
    targets = backend.encode_batch([" " + e.target for e in examples if e.target], add_special_tokens=False)
    targets = iter(targets)
    out = []
    for example, src, pre in zip(examples, sources, prefixes):
        ids = src.ids
        if len(ids) > budget:
            ids, example = _truncate(example, ids, src.offsets, budget)
        target = next(targets).ids + [eos] if example.target else []
        out.append(Encoded(example, np.array([*head, *ids, eos], dtype=np.int32), np.array(pre.ids, dtype=np.int32),
                           np.array(target, dtype=np.int32)))
    return out
