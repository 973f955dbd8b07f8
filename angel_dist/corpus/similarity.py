"""Character TF-IDF similarity between names (GenBioEL's `most_sim` mentions, SYN-k targets).

Term frequencies come from scikit-learn's stateless `HashingVectorizer`, so every Ray worker
vectorizes identically without shipping a vocabulary; the IDF is fitted once (on the KB's
names, or a deterministic sample of them at UMLS scale) and shipped as one float32 array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.preprocessing import normalize

N_FEATURES = 2 ** 20
FIT_SAMPLE = 200_000
_PAIR_CHUNK = 262_144


def _vectorizer() -> HashingVectorizer:
    return HashingVectorizer(analyzer="char_wb", ngram_range=(2, 3), n_features=N_FEATURES,
                             alternate_sign=False, norm=None, lowercase=True, dtype=np.float32)


@dataclass(frozen=True)
class CharTfidf:
    idf: np.ndarray  # float32 [N_FEATURES]

    @classmethod
    def fit(cls, names: list[str] | pa.Array | pa.ChunkedArray) -> "CharTfidf":
        """IDF as scikit-learn's smooth formula; over at most FIT_SAMPLE names taken at a fixed stride
        (of an Arrow array, only those are made Python strings)."""
        if len(names) > FIT_SAMPLE:
            names = names[:: -(-len(names) // FIT_SAMPLE)]
        if isinstance(names, (pa.Array, pa.ChunkedArray)):
            names = names.to_pylist()
        counts = _vectorizer().transform(names)
        df = np.bincount(counts.indices, minlength=N_FEATURES).astype(np.float64)
        idf = np.log((1.0 + len(names)) / (1.0 + df)) + 1.0
        return cls(idf.astype(np.float32))

    def transform(self, names: list[str]) -> sp.csr_matrix:
        """L2-normalized TF-IDF rows."""
        counts = _vectorizer().transform(names)
        counts.data *= self.idf[counts.indices]
        return normalize(counts, norm="l2", copy=False)


def pair_similarity(a: sp.csr_matrix, b: sp.csr_matrix, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Cosine similarity of rows a[ia[n]] and b[ib[n]] for every n, in bounded-memory chunks."""
    out = np.empty(len(ia), dtype=np.float32)
    for start in range(0, len(ia), _PAIR_CHUNK):
        sl = slice(start, start + _PAIR_CHUNK)
        out[sl] = np.asarray(a[ia[sl]].multiply(b[ib[sl]]).sum(axis=1)).ravel()
    return out


def group_pairs(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ordered pair (i, j), i != j, of rows within each group [offsets[g], offsets[g+1])."""
    sizes = np.diff(offsets)
    row_group_size = np.repeat(sizes, sizes)
    i = np.repeat(np.arange(offsets[-1]), row_group_size)
    row_start = np.repeat(offsets[:-1], sizes)
    # j runs over the row's group: start + 0..size-1, built from a cumulative count.
    first = np.repeat(np.cumsum(row_group_size) - row_group_size, row_group_size)
    j = np.repeat(row_start, row_group_size) + (np.arange(len(i)) - first)
    keep = i != j
    return i[keep], j[keep]


def most_similar_other(matrix: sp.csr_matrix, offsets: np.ndarray) -> np.ndarray:
    """For each row, the most similar other row of its group (lowest index on ties); -1 when alone."""
    best = np.full(matrix.shape[0], -1, dtype=np.int64)
    i, j = group_pairs(offsets)
    if not len(i):
        return best
    sim = pair_similarity(matrix, matrix, i, j)
    order = np.lexsort((j, -sim, i))
    i, j = i[order], j[order]
    first = np.ones(len(i), dtype=bool)
    first[1:] = i[1:] != i[:-1]
    best[i[first]] = j[first]
    return best


def top_k_per_query(query: sp.csr_matrix, candidates: sp.csr_matrix, offsets: np.ndarray, k: int) -> list[list[int]]:
    """For query q, the indices (into its own candidate group [offsets[q], offsets[q+1])) of
    the k most similar candidates, best first, ties by candidate order."""
    sizes = np.diff(offsets)
    q = np.repeat(np.arange(len(sizes)), sizes)
    c = np.arange(offsets[-1])
    sim = pair_similarity(query, candidates, q, c) if len(c) else np.empty(0, np.float32)
    order = np.lexsort((c, -sim, q))
    ranked = c[order] - np.repeat(offsets[:-1], sizes)
    return [ranked[offsets[g]:offsets[g] + min(k, sizes[g])].tolist() for g in range(len(sizes))]
