"""The char TF-IDF nearest-name baseline: each mention linked to the KB names whose character
2-3-gram TF-IDF vectors are closest (cosine), scored by the same acc@k as the model.
No model, no Ray: a sparse product in chunks of mentions."""

from __future__ import annotations

import numpy as np

from angel_dist.corpus.similarity import CharTfidf
from angel_dist.evaluate.metrics import accuracy
from angel_dist.kb.normalize import normalize_name
from angel_dist.mine.work import distinct_inputs, mention_of
from angel_dist.shards.reader import iter_shard, open_shard_sets

_CHUNK = 256


def tfidf_records(names: list[str], cuis: list[list[str]], samples: list[dict], k: int,
                  index: tuple[CharTfidf, object] | None = None) -> list[dict]:
    """`index`: the fitted TF-IDF and the transposed name matrix, to reuse across calls."""
    tfidf, matrix = index or name_index(names)
    records = []
    for lo in range(0, len(samples), _CHUNK):
        part = samples[lo:lo + _CHUNK]
        queries = tfidf.transform([normalize_name(mention_of(s)) for s in part])
        sims = (queries @ matrix).toarray()
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        for s, row, best in zip(part, sims, top):
            gold = set(s["cuis"])
            records.append({"key": s["__key__"], "given_mention": mention_of(s), "result": [names[j] for j in best],
                            "cui_label": list(s["cuis"]), "cui_result": [list(cuis[j]) for j in best],
                            "scores": [float(row[j]) for j in best],
                            "correctness": [bool(gold & set(cuis[j])) for j in best]})
    return records


def name_index(names: list[str]) -> tuple[CharTfidf, object]:
    tfidf = CharTfidf.fit(names)
    return tfidf, tfidf.transform(names).T.tocsc()


def tfidf_baseline(trie, sets: dict[str, str], k: int) -> dict[str, dict]:
    """acc@1..k of the baseline on each example shard set, over the names of `trie` (a Trie);
    the names are vectorized once for all sets."""
    table = trie.names()
    names, cuis = table["name"].to_pylist(), table["cuis"].to_pylist()
    index = name_index(names)
    kb_cuis = {c for cs in cuis for c in cs}
    out = {}
    for split, data in sets.items():
        shards, _ = open_shard_sets(data)
        samples = distinct_inputs([s for shard in shards for s in iter_shard(shard)])
        out[split] = accuracy(tfidf_records(names, cuis, samples, k, index), k, kb_cuis)
    return out
