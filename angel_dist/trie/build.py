"""KB table + tokenizer -> trie directory.

Layout (written to a temporary directory, renamed into place when complete):
  offsets.npy, child_tokens.npy, child_nodes.npy   int32 CSR arrays (see csr.py)
  heights.npy     int32 per node: the most tokens a name can still take from it (the exact
                  search's stopping bound)
  names.parquet   name_id (= leaf node - n_internal), name, cuis (the concept ids and
                  alternative ids of every concept that has this name)
  meta.json       sizes, eos and vocabulary size, tokenizer and KB fingerprints
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from angel_dist.atomic import atomic_path, write_json
from angel_dist.kb.table import read_kb, read_kb_meta
from angel_dist.tokenizer import tokenizer_fingerprint
from angel_dist.trie.csr import build_csr, node_heights
from angel_dist.trie.trie import ARRAYS, FORMAT_VERSION, HEIGHTS_FILE, META_FILE, NAMES_FILE

ENCODE_BATCH = 50_000


def name_table(kb: pa.Table) -> pa.Table:
    """Distinct names, sorted, each with the sorted ids of every concept that carries it."""
    concept = pc.list_parent_indices(kb["names"])
    names = pa.table({"concept": concept, "name": pc.list_flatten(kb["names"])})
    ids = pa.concat_tables([
        pa.table({"concept": pa.array(np.arange(kb.num_rows)), "cui": kb["cui"]}),
        pa.table({"concept": pc.list_parent_indices(kb["alt_ids"]), "cui": pc.list_flatten(kb["alt_ids"])}),
    ])
    pairs = names.join(ids, "concept").select(["name", "cui"])
    pairs = pairs.group_by(["name", "cui"]).aggregate([]).sort_by([("name", "ascending"), ("cui", "ascending")])
    grouped = pairs.group_by("name", use_threads=False).aggregate([("cui", "list")])
    return pa.table({"name_id": pa.array(np.arange(grouped.num_rows, dtype=np.int32)),
                     "name": grouped["name"], "cuis": grouped["cui_list"]})


def encode_names(names: list[str], tokenizer, eos: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Flat token ids and lengths of `tok(" " + name) + [eos]` for every name."""
    flats, lengths = [], []
    backend = tokenizer.backend_tokenizer
    for start in tqdm(range(0, len(names), ENCODE_BATCH), desc="tokenize", unit="batch", disable=not progress,
                      leave=False):
        batch = [" " + name for name in names[start:start + ENCODE_BATCH]]
        encodings = backend.encode_batch(batch, add_special_tokens=False)
        lens = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        body = np.fromiter((t for e in encodings for t in e.ids), dtype=np.int32, count=int(lens.sum()))
        # Interleave an eos after each name without a Python loop.
        flat = np.empty(len(body) + len(lens), dtype=np.int32)
        ends = np.cumsum(lens + 1) - 1
        is_eos = np.zeros(len(flat), dtype=bool)
        is_eos[ends] = True
        flat[is_eos] = eos
        flat[~is_eos] = body
        flats.append(flat)
        lengths.append(lens + 1)
    if not flats:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    return np.concatenate(flats), np.concatenate(lengths)


def build_trie(kb_path: str | Path, tokenizer, out_dir: str | Path, tokenizer_name: str = "",
               progress: bool = True) -> dict:
    kb_path = Path(kb_path)
    kb_meta = read_kb_meta(kb_path)
    t0 = time.perf_counter()
    names = name_table(read_kb(kb_path, ["cui", "names", "alt_ids"]))
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token")
    tokens, lengths = encode_names(names["name"].to_pylist(), tokenizer, eos, progress)
    t_tokenize = time.perf_counter() - t0
    csr = build_csr(tokens, lengths, eos)
    arrays = {name: getattr(csr, name) for name in ARRAYS}
    meta = {
        "format_version": FORMAT_VERSION,
        "n_internal": csr.n_internal, "n_names": csr.n_sequences, "n_nodes": csr.n_nodes,
        "n_edges": len(csr.child_tokens), "max_degree": csr.max_degree, "max_depth": csr.max_depth,
        "eos": int(eos), "vocab_size": len(tokenizer),
        "bytes": int(sum(a.nbytes for a in arrays.values())),
        "tokenizer": tokenizer_name or getattr(tokenizer, "name_or_path", ""),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "kb": str(kb_path), "kb_fingerprint": kb_meta["fingerprint"],
        "seconds": {"names_and_tokenize": round(t_tokenize, 2), "total": round(time.perf_counter() - t0, 2)},
    }
    with atomic_path(out_dir, directory=True) as tmp:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        np.save(tmp / HEIGHTS_FILE, node_heights(csr))
        pq.write_table(names, tmp / NAMES_FILE)
        write_json(tmp / META_FILE, meta)
    return meta
