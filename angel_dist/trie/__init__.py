"""Prefix trie over tokenized KB names for constrained decoding."""

from angel_dist.trie.csr import CsrTrie, build_csr
from angel_dist.trie.trie import Trie

__all__ = ["CsrTrie", "Trie", "build_csr"]
