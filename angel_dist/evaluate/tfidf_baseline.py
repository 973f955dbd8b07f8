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


def tfidf_records(names: list[str], cuis: list[list[str]], samples: list[dict], k: int) -> list[dict]:
    tfidf = CharTfidf.fit(names)
    matrix = tfidf.transform(names).T.tocsc()
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


def tfidf_baseline(trie, data: str, k: int) -> dict:
    """acc@1..k of the baseline on an example shard set, over the names of `trie` (a Trie)."""
    table = trie.names()
    names, cuis = table["name"].to_pylist(), table["cuis"].to_pylist()
    shards, _ = open_shard_sets(data)
    samples = distinct_inputs([s for shard in shards for s in iter_shard(shard)])
    kb_cuis = {c for cs in cuis for c in cs}
    return accuracy(tfidf_records(names, cuis, samples, k), k, kb_cuis)
