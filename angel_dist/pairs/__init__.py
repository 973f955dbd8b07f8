"""Preference pairs (chosen, rejected) for DPO, and their shard sets."""

from angel_dist.pairs.shard_set import Pair, write_pair_set

__all__ = ["Pair", "write_pair_set"]
