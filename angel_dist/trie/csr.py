"""Build a prefix trie over token sequences as compact CSR arrays, level by level in NumPy.

Node numbering: the root is 0; nodes that have children ("internal": every node reached by a
non-eos token) are numbered breadth-first; the eos leaves come after them, leaf
`n_internal + i` ending sequence i. So a leaf's name id is its node id minus `n_internal`,
and no per-node array is needed for it.

Arrays: `offsets[n_internal + 1]`, and per edge `child_tokens`, `child_nodes`; the edges of
node p are `offsets[p]:offsets[p + 1]`, sorted by token. Building one level at a time keeps
every step a vectorized sort over the sequences still alive at that depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INDEX_DTYPE = np.int32
_INDEX_MAX = np.iinfo(INDEX_DTYPE).max


@dataclass
class CsrTrie:
    offsets: np.ndarray
    child_tokens: np.ndarray
    child_nodes: np.ndarray
    n_internal: int
    n_sequences: int
    max_degree: int
    max_depth: int

    @property
    def n_nodes(self) -> int:
        return self.n_internal + self.n_sequences


def build_csr(tokens: np.ndarray, lengths: np.ndarray, eos: int) -> CsrTrie:
    """Trie of the sequences `tokens[start_i : start_i + lengths[i]]` laid end to end.

    Each sequence must end with `eos`, contain it nowhere else, and be distinct from the others.
    """
    tokens = np.asarray(tokens)
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    if n and (lengths.min() < 1 or (tokens[starts + lengths - 1] != eos).any()):
        raise ValueError("every sequence must end with the eos token")
    if int((tokens == eos).sum()) != n:
        raise ValueError("the eos token may only appear at the end of a sequence")
    vocab = int(tokens.max()) + 1 if len(tokens) else eos + 1

    node = np.zeros(n, dtype=np.int64)  # the node each sequence has reached so far
    alive = np.arange(n, dtype=np.int64)
    parents, edge_tokens, children = [], [], []
    next_internal = 1
    depth = 0
    while len(alive):
        alive = alive[lengths[alive] > depth]
        if not len(alive):
            break
        token = tokens[starts[alive] + depth].astype(np.int64)
        keys, first, inverse = np.unique(node[alive] * vocab + token, return_index=True, return_inverse=True)
        edge_parent, edge_token = keys // vocab, keys % vocab
        leaf = edge_token == eos
        child = np.empty(len(keys), dtype=np.int64)
        n_new = int((~leaf).sum())
        child[~leaf] = np.arange(next_internal, next_internal + n_new)
        child[leaf] = -1 - alive[first[leaf]]  # leaf of that sequence, numbered once all internals are known
        if int(leaf.sum()) != int((token == eos).sum()):
            raise ValueError("duplicate sequences: each name must tokenize differently")
        next_internal += n_new
        node[alive] = child[inverse]
        # Stored as int32 right away: at UMLS scale these are ~10^8 edges.
        parents.append(edge_parent.astype(INDEX_DTYPE))
        edge_tokens.append(edge_token.astype(INDEX_DTYPE))
        children.append(child.astype(INDEX_DTYPE))
        depth += 1

    n_internal = next_internal
    if n_internal + n > _INDEX_MAX:
        raise ValueError(f"{n_internal + n} trie nodes exceed the int32 index range")
    empty = np.zeros(0, INDEX_DTYPE)
    parent = np.concatenate(parents) if parents else empty
    del parents
    child = np.concatenate(children) if children else empty
    del children
    leaves = child < 0
    child[leaves] = n_internal - 1 - child[leaves]
    offsets = np.zeros(n_internal + 1, dtype=np.int64)
    np.cumsum(np.bincount(parent, minlength=n_internal), out=offsets[1:])
    del parent
    degrees = np.diff(offsets)
    return CsrTrie(
        offsets=offsets.astype(INDEX_DTYPE),
        child_tokens=np.concatenate(edge_tokens) if edge_tokens else empty,
        child_nodes=child,
        n_internal=n_internal,
        n_sequences=n,
        max_degree=int(degrees.max()) if len(degrees) else 0,
        max_depth=depth,
    )


def node_heights(csr: CsrTrie) -> np.ndarray:
    """int32 [n_nodes]: the most tokens (eos included) a sequence can still take from each
    node; 0 at leaves."""
    height = np.zeros(csr.n_nodes, dtype=np.int32)
    if csr.n_internal and len(csr.child_nodes):
        # Every internal node has a child; a node's height is final once its deepest child's
        # is, so max_depth rounds of "1 + max over children" settle all of them.
        starts = np.asarray(csr.offsets[:-1], dtype=np.int64)
        for _ in range(csr.max_depth):
            new = 1 + np.maximum.reduceat(height[csr.child_nodes], starts)
            if np.array_equal(new, height[:csr.n_internal]):
                break
            height[:csr.n_internal] = new
    return height
