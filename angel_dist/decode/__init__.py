"""Decoding: trie-constrained beam search over KB names, and the linker built on it."""

from angel_dist.decode.beam import BeamSearch, Hypothesis, SearchStats
from angel_dist.decode.linker import Linker, Prediction

__all__ = ["BeamSearch", "Hypothesis", "Linker", "Prediction", "SearchStats"]
