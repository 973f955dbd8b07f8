"""Pair shard sets: what mining writes and DPO training reads (format in shards/README.md).

Written in the calling process: a round's pairs come from mining actors that already hold
them, so there is nothing left to parallelize but the (cheap) tar writing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from angel_dist.keys import shard_of
from angel_dist.shards.format import decode_sample, members
from angel_dist.shards.writer import ShardSetPlan, finish, prepare, write_shard


@dataclass
class Pair:
    key: str  # unique in the set, a valid WebDataset key
    source_key: str  # the example the pair was mined from
    prompt: str  # the encoder input (TRL's field name), with START/END
    prefix: str  # "{mention} is"
    chosen: str  # a correct name
    rejected: str  # a wrong name ranked above it (or the top wrong beams)
    cuis: list[str]  # gold concept ids
    source_ids: np.ndarray
    prefix_ids: np.ndarray
    chosen_ids: np.ndarray  # tok(" " + chosen) + [eos]
    rejected_ids: np.ndarray
    ref_chosen_logp: float  # from the log-prob function under the model that mined the round
    ref_rejected_logp: float
    round: int = 0
    chosen_cuis: list[str] = field(default_factory=list)
    rejected_cuis: list[str] = field(default_factory=list)
    chosen_rank: int = 0  # beam ranks, 1-based; 0 when the name was not a beam
    rejected_rank: int = 0

    def members(self) -> list[tuple[str, bytes]]:
        record = {"kind": "pair", "prompt": self.prompt, "prefix": self.prefix,
                  "chosen": self.chosen, "rejected": self.rejected, "cuis": self.cuis,
                  "chosen_cuis": self.chosen_cuis, "rejected_cuis": self.rejected_cuis,
                  "chosen_rank": self.chosen_rank, "rejected_rank": self.rejected_rank, "round": self.round,
                  "source_key": self.source_key, "ref_chosen_logp": float(self.ref_chosen_logp),
                  "ref_rejected_logp": float(self.ref_rejected_logp)}
        return members(self.key, record, [self.source_ids, self.prefix_ids, self.chosen_ids, self.rejected_ids])

    def sample(self) -> dict:
        """The pair as the training reader yields it from its shard (what `collate` batches)."""
        return decode_sample(self.key, {name.removeprefix(f"{self.key}."): data for name, data in self.members()})


def write_pair_set(out: str | Path, pairs: list[Pair], n_shards: int, config: dict, fingerprints: dict,
                   overwrite: bool = False) -> dict:
    """Pairs partitioned by their source example (its pairs share a shard); returns the manifest."""
    plan = ShardSetPlan(Path(out), "pairs", n_shards, config, fingerprints)
    pending = set(prepare(plan, overwrite))
    parts: dict[int, list[Pair]] = {i: [] for i in range(n_shards)}
    for pair in pairs:
        parts[shard_of(pair.source_key, n_shards)].append(pair)
    for i in sorted(pending):
        write_pair_shard(plan.out, i, plan.config_hash, parts[i])
    return finish(plan, {"pairs": len(pairs)})


def write_pair_shard(out: str | Path, index: int, config_hash: str, pairs: list[Pair],
                     stats: Counter | None = None) -> dict:
    """One pair shard, atomically (what each mining actor writes for its input shard); `stats`
    go into its record and add up in the manifest."""
    return write_shard(Path(out), index, config_hash, ((p.members(), len(p.source_ids)) for p in pairs), stats)
