"""Preference pairs (chosen, rejected) for DPO: the pair rule and pair shard sets."""

from angel_dist.pairs.rule import Beam, Preference, preferences
from angel_dist.pairs.shard_set import Pair, write_pair_set, write_pair_shard

__all__ = ["Beam", "Pair", "Preference", "preferences", "write_pair_set", "write_pair_shard"]
