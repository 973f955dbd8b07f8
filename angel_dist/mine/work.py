"""One input shard's work on a loaded linker, with no Ray in sight (the pool calls it).

Mining: the shard's distinct inputs -> top-k names -> ANGEL's pairs -> reference log-probs
(the one log-prob function, on the mining weights, batched exactly as DPO training batches
them) -> one pair shard, written atomically. Evaluation: the same search -> one prediction
record per input, in ANGEL's result layout.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from angel_dist.corpus.similarity import CharTfidf, top_k_per_query
from angel_dist.decode.linker import Linker, Prediction
from angel_dist.faults import crash_once
from angel_dist.keys import stable_hash64
from angel_dist.kb.normalize import normalize_name
from angel_dist.model import family_of, score_pairs
from angel_dist.pairs import Beam, Pair, preferences, write_pair_shard
from angel_dist.shards.reader import Shard, collate, iter_shard

FAULT_ENV = "ANGEL_MINE_FAULT"  # "SHARD:N": the worker on input shard SHARD dies after N inputs, once per output set


@dataclass(frozen=True)
class MineSettings:
    dpo_topk: int = 5
    gold_fallback: bool = False  # no correct beam: the gold name most similar to the mention as chosen
    round: int = 0
    fraction: float = 1.0  # of each shard's inputs, a deterministic sample by key (pretraining rounds)
    seed: int = 0
    chunk: int = 0  # mine only inputs of this chunk out of `chunks` (fine-tuning rounds)
    chunks: int = 1
    search_chunk: int = 256  # inputs per search call: the granularity of progress and fault injection
    ref_batch_size: int = 64


def distinct_inputs(samples: list[dict], fraction: float = 1.0, seed: int = 0, round_: int = 0, chunk: int = 0,
                    chunks: int = 1) -> list[dict]:
    """One sample per distinct (source, prefix, gold): the SYN-k rows of a mention differ only in
    their target and are one input to a search. With `fraction` < 1, a sample of them chosen by a
    hash of (seed, round, key); with `chunks` > 1, the inputs of one of `chunks` interleaved
    chunks (a hash of the key modulo `chunks`). The same on any worker."""
    seen, out = set(), []
    for s in samples:
        identity = (s["source_ids"].tobytes(), s["prefix_ids"].tobytes(), tuple(s["cuis"]))
        if identity in seen:
            continue
        seen.add(identity)
        if fraction < 1.0 and stable_hash64(s["__key__"], seed * 1_000_003 + round_) / 2.0 ** 64 >= fraction:
            continue
        if chunks > 1 and stable_hash64(s["__key__"], seed) % chunks != chunk:
            continue
        out.append(s)
    return out


def mention_of(sample: dict) -> str:
    prefix = sample["prefix"]
    return prefix[:-3] if prefix.endswith(" is") else prefix


class GoldNames:
    """Gold concept -> its KB names, and the one most similar to a mention (char TF-IDF).

    Every mining actor holds one, so it stays in Arrow columns: the (concept, row) pairs sorted by
    concept and searched by bisection. A dict of Python strings took 5.5x the memory (2M names:
    +492 MB and 11 s to build against +89 MB and 7 s, 6 of them the IDF's fit on its sample)."""

    def __init__(self, names_table: pa.Table):
        cuis = names_table["cuis"].combine_chunks()
        concepts, rows = pc.list_flatten(cuis), pc.list_parent_indices(cuis)
        order = pc.sort_indices(concepts)  # stable: a concept's names keep the table's order
        self._concepts = _ArrowStrings(concepts.take(order))
        self._rows = rows.take(order).to_numpy()
        self._names = names_table["name"].combine_chunks()
        self.tfidf = CharTfidf.fit(self._names)

    def names_of(self, cui: str) -> list[str]:
        rows = self._rows[bisect_left(self._concepts, cui):bisect_right(self._concepts, cui)]
        return self._names.take(rows).to_pylist()

    def most_similar(self, mention: str, gold: list[str]) -> str | None:
        candidates = list(dict.fromkeys(n for g in gold for n in self.names_of(g)))
        if not candidates:
            return None
        best = top_k_per_query(self.tfidf.transform([normalize_name(mention)]), self.tfidf.transform(candidates),
                               np.array([0, len(candidates)]), 1)
        return candidates[best[0][0]]


class _ArrowStrings(Sequence):
    """A sorted Arrow string array as the sequence `bisect` searches, one element converted per probe."""

    def __init__(self, array: pa.Array):
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> str:
        return self.array[i].as_py()


def _maybe_fault(fault: tuple[int, int, Path] | None, index: int, done: int) -> None:
    if fault is None:
        return
    shard, after, marker = fault
    if shard == index and done >= after:
        crash_once(marker, f"{FAULT_ENV}: worker on shard {index} dies after {done} inputs", 13)


def search_inputs(linker: Linker, samples: list[dict], chunk: int, index: int = 0,
                  fault: tuple[int, int, Path] | None = None) -> list[list[Prediction]]:
    out: list[list[Prediction]] = []
    for lo in range(0, len(samples), chunk):
        part = samples[lo:lo + chunk]
        out += linker.predict([s["source_ids"] for s in part], [s["prefix_ids"] for s in part])
        _maybe_fault(fault, index, len(out))
    return out


def reference_logps(linker: Linker, pairs: list[Pair], batch_size: int) -> None:
    """Fill each pair's reference log-probs under the linker's (mining) weights."""
    ids = family_of(linker.model).batch_ids(linker.model, linker.tokenizer)
    for lo in range(0, len(pairs), batch_size):
        part = pairs[lo:lo + batch_size]
        batch = collate([p.sample() for p in part], **ids)
        batch = {k: v.to(linker.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.inference_mode():
            chosen, rejected = score_pairs(linker.model, batch)
        for p, c, r in zip(part, chosen.logp.tolist(), rejected.logp.tolist()):
            p.ref_chosen_logp, p.ref_rejected_logp = c, r


def pairs_of(linker: Linker, samples: list[dict], predictions: list[list[Prediction]], settings: MineSettings,
             gold_names: GoldNames | None = None) -> tuple[list[Pair], Counter]:
    stats: Counter = Counter()
    pending = []  # (sample, preference)
    for sample, preds in zip(samples, predictions):
        gold = set(sample["cuis"])
        beams = [Beam(p.name, frozenset(p.cuis)) for p in preds]
        top = beams[:settings.dpo_topk]
        stats["inputs"] += 1
        stats["top1_correct"] += bool(top and top[0].cuis & gold)
        hit = any(b.cuis & gold for b in top)
        stats["no_correct_beam"] += not hit
        fallback = gold_names.most_similar(mention_of(sample), sample["cuis"]) \
            if gold_names is not None and not hit else None
        found = preferences(beams, gold, settings.dpo_topk, fallback)
        stats["inputs_with_pairs"] += bool(found)
        pending += [(sample, pref) for pref in found]
    names = list(dict.fromkeys(n for _, p in pending for n in (p.chosen, p.rejected)))
    ids = dict(zip(names, linker.name_ids(names)))
    pairs, per_input = [], Counter()
    for sample, pref in pending:
        key = sample["__key__"]
        j = per_input[key]
        per_input[key] += 1
        pairs.append(Pair(key=f"{key}-p{j:02d}", source_key=key, prompt=sample["source"], prefix=sample["prefix"],
                          chosen=pref.chosen, rejected=pref.rejected, cuis=list(sample["cuis"]),
                          source_ids=sample["source_ids"], prefix_ids=sample["prefix_ids"],
                          chosen_ids=ids[pref.chosen], rejected_ids=ids[pref.rejected], ref_chosen_logp=0.0,
                          ref_rejected_logp=0.0, round=settings.round, chosen_cuis=list(pref.chosen_cuis),
                          rejected_cuis=list(pref.rejected_cuis), chosen_rank=pref.chosen_rank,
                          rejected_rank=pref.rejected_rank))
    reference_logps(linker, pairs, settings.ref_batch_size)
    stats["pairs"] = len(pairs)
    return pairs, stats


def mine_shard(linker: Linker, shard: Shard, index: int, out: str | Path, config_hash: str, settings: MineSettings,
               gold_names: GoldNames | None = None, fault: tuple[int, int, Path] | None = None) -> dict:
    examples = list(iter_shard(shard))
    samples = distinct_inputs(examples, settings.fraction, settings.seed, settings.round, settings.chunk,
                              settings.chunks)
    predictions = search_inputs(linker, samples, settings.search_chunk, index, fault)
    pairs, stats = pairs_of(linker, samples, predictions, settings, gold_names)
    record = write_pair_shard(out, index, config_hash, pairs, stats)
    # The bar counts the examples read (its total is known before any shard is), `searched` the
    # distinct inputs of the round's sample among them.
    return {"index": index, "inputs": len(examples), "searched": len(samples), "pairs": len(pairs),
            "stats": dict(stats), "sha256": record["sha256"]}


def prediction_record(sample: dict, preds: list[Prediction]) -> dict:
    """ANGEL's result layout, plus the key, scores and CUIs of each beam."""
    gold = set(sample["cuis"])
    return {"key": sample["__key__"], "given_mention": mention_of(sample), "result": [p.name for p in preds],
            "cui_label": list(sample["cuis"]), "cui_result": [list(p.cuis) for p in preds],
            "scores": [p.score for p in preds], "correctness": [bool(gold & set(p.cuis)) for p in preds]}


def predict_shard(linker: Linker, shard: Shard, index: int, chunk: int = 256) -> dict:
    samples = distinct_inputs(list(iter_shard(shard)))
    predictions = search_inputs(linker, samples, chunk)
    return {"index": index, "inputs": len(samples),
            "records": [prediction_record(s, p) for s, p in zip(samples, predictions)]}
