"""The constrained-decoding trie: CSR arrays on disk (.npy, memory-mapped) and its queries.

States are node ids in an int64 tensor; -1 is the dead state (a token the trie does not
allow was taken). `advance` and `allowed_mask` are vectorized over the batch and run on
whatever device the trie was moved to. Opened from disk, the arrays are memory-mapped
read-only, so every process on a node (Ray actors included) shares one copy in the page
cache instead of holding its own.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from angel_dist.trie.csr import CsrTrie, node_heights

FORMAT_VERSION = 1
ARRAYS = ("offsets", "child_tokens", "child_nodes")
HEIGHTS_FILE = "heights.npy"  # optional: tries built before it compute the heights on load
META_FILE = "meta.json"
NAMES_FILE = "names.parquet"


def _tensor(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        # A read-only memory map: torch warns that writes would be undefined; we never write.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


class Trie:
    def __init__(self, csr: CsrTrie, eos: int, vocab_size: int, meta: dict | None = None,
                 directory: Path | None = None):
        self.eos = int(eos)
        self.vocab_size = int(vocab_size)
        self.n_internal = csr.n_internal
        self.n_names = csr.n_sequences
        self.max_degree = csr.max_degree
        self.max_depth = csr.max_depth
        self.meta = dict(meta or {})
        self.directory = directory
        self._csr = csr  # numpy arrays (memory-mapped when loaded) for the one-prefix queries
        self._t = {name: _tensor(getattr(csr, name)) for name in ARRAYS}
        # Binary-search rounds that cover the widest node.
        self._search_rounds = max(1, int(self.max_degree).bit_length())

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device | None = None,
             mmap: bool = True) -> "Trie":
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"{directory}: not a trie directory (no {META_FILE})")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory}: trie format {meta.get('format_version')}, expected {FORMAT_VERSION}")
        arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r" if mmap else None) for name in ARRAYS}
        if len(arrays["offsets"]) != meta["n_internal"] + 1 or len(arrays["child_tokens"]) != meta["n_edges"] \
                or len(arrays["child_nodes"]) != meta["n_edges"]:
            raise ValueError(f"{directory}: array sizes do not match {META_FILE}")
        csr = CsrTrie(n_internal=meta["n_internal"], n_sequences=meta["n_names"], max_degree=meta["max_degree"],
                      max_depth=meta["max_depth"], **arrays)
        trie = cls(csr, meta["eos"], meta["vocab_size"], meta, directory)
        return trie.to(device) if device is not None else trie

    def to(self, device: str | torch.device) -> "Trie":
        self._t = {name: t.to(device) for name, t in self._t.items()}
        return self

    @property
    def device(self) -> torch.device:
        return self._t["offsets"].device

    @property
    def root(self) -> int:
        return 0

    @property
    def n_nodes(self) -> int:
        return self.n_internal + self.n_names

    def check_tokenizer(self, fingerprint: str) -> None:
        built = self.meta.get("tokenizer_fingerprint")
        if built != fingerprint:
            raise ValueError(f"trie {self.directory} was built with tokenizer {built}, "
                             f"but the tokenizer in use is {fingerprint}")

    # -- single sequences (NumPy) -------------------------------------------------------
    def _child(self, node: int, token: int) -> int:
        if node < 0 or node >= self.n_internal:
            return -1
        lo, hi = int(self._csr.offsets[node]), int(self._csr.offsets[node + 1])
        tokens = self._csr.child_tokens[lo:hi]
        i = int(np.searchsorted(tokens, token))
        return int(self._csr.child_nodes[lo + i]) if i < len(tokens) and tokens[i] == token else -1

    def state(self, prefix_tokens) -> int:
        node = self.root
        for token in prefix_tokens:
            node = self._child(node, int(token))
            if node < 0:
                break
        return node

    def allowed(self, prefix_tokens) -> list[int]:
        """Tokens that may follow `prefix_tokens` (a prefix of `tok(" " + name) + [eos]`)."""
        node = self.state(prefix_tokens)
        if node < 0 or node >= self.n_internal:
            return []
        lo, hi = int(self._csr.offsets[node]), int(self._csr.offsets[node + 1])
        return self._csr.child_tokens[lo:hi].tolist()

    # -- batches (torch, any device) ---------------------------------------------------
    def start(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, dtype=torch.long, device=self.device)

    def _ranges(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        internal = (states >= 0) & (states < self.n_internal)
        node = torch.where(internal, states, torch.zeros_like(states))
        offsets = self._t["offsets"]
        lo = offsets[node].long()
        hi = torch.where(internal, offsets[node + 1].long(), lo)
        return lo, hi

    def advance(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Next state of each (state, token); -1 where the trie does not allow the token."""
        states, tokens = states.long(), tokens.long().to(states.device)
        lo, end = self._ranges(states)
        hi = end.clone()
        child_tokens = self._t["child_tokens"]
        last = max(len(child_tokens) - 1, 0)
        for _ in range(self._search_rounds):  # lower bound of `tokens` in each node's sorted edges
            mid = (lo + hi) >> 1
            go_right = (lo < hi) & (child_tokens[mid.clamp(max=last)].long() < tokens)
            lo = torch.where(go_right, mid + 1, lo)
            hi = torch.where(go_right | (lo >= hi), hi, mid)
        index = lo.clamp(max=last)
        found = (lo < end) & (child_tokens[index].long() == tokens) if len(child_tokens) else lo < end
        return torch.where(found, self._t["child_nodes"][index].long(), torch.full_like(states, -1))

    def children(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The edges out of each state, one row per state, padded to the widest: (token, child
        node, valid), each [len(states), D]; padding has valid False and child -1.

        What a constrained search scores instead of a dense [B, V] mask: a state allows a
        handful of tokens, so the candidates are these edges, not the vocabulary. D is at most
        the vocabulary size, so the padded rows never outgrow the logits they index."""
        states = states.long()
        lo, hi = self._ranges(states)
        width = max(int((hi - lo).max()), 1) if len(states) else 1
        index = lo[:, None] + torch.arange(width, device=states.device)
        valid = index < hi[:, None]
        index = torch.where(valid, index, torch.zeros_like(index))
        children = torch.where(valid, self._t["child_nodes"][index].long(), -1)
        return self._t["child_tokens"][index].long(), children, valid

    def heights(self) -> torch.Tensor:
        """int32 [n_nodes]: the most tokens (eos included) a name can still take from each node;
        0 at leaves. It bounds how much a beam can still gain from length normalization, so a
        search can stop early without changing its result. Memory-mapped from the trie
        directory (shared by the processes of a node, like the CSR arrays) when the build wrote
        it, else computed once."""
        if "heights" not in self._t:
            path = self.directory / HEIGHTS_FILE if self.directory is not None else None
            if path is not None and path.exists():
                height = np.load(path, mmap_mode="r")
                if len(height) != self.n_nodes:
                    raise ValueError(f"{path}: {len(height)} heights for {self.n_nodes} nodes")
            else:
                height = node_heights(self._csr)
            self._t["heights"] = _tensor(height).to(self.device)
        return self._t["heights"]

    def allowed_mask(self, states: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
        """bool[B, V]: which tokens each state allows (all False for dead states and leaves)."""
        tokens, _, valid = self.children(states)
        mask = torch.zeros(len(states), vocab_size or self.vocab_size, dtype=torch.bool, device=states.device)
        mask[valid.nonzero(as_tuple=True)[0], tokens[valid]] = True
        return mask

    def name_ids(self, states: torch.Tensor) -> torch.Tensor:
        """The name id of each leaf state (a finished name), -1 elsewhere."""
        states = states.long()
        leaf = states >= self.n_internal
        return torch.where(leaf, states - self.n_internal, torch.full_like(states, -1))

    def names(self):
        """The name table: `name_id`, `name`, `cuis` (a pyarrow Table)."""
        if self.directory is None:
            raise ValueError("an in-memory trie has no name table")
        return pq.read_table(self.directory / NAMES_FILE)
