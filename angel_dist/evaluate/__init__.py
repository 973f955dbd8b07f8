"""Evaluation: acc@1..k of a model on an example shard set (benchmark mentions), with one
prediction record per mention in ANGEL's result layout."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow.compute as pc

from angel_dist.atomic import atomic_path
from angel_dist.evaluate.metrics import accuracy, format_table, hit_at
from angel_dist.mine import linker_spec, search_inputs
from angel_dist.mine.pool import run_pool
from angel_dist.mine.work import MineSettings

__all__ = ["EvalConfig", "accuracy", "evaluate", "format_table", "hit_at"]


@dataclass
class EvalConfig:
    model: str
    trie: str
    data: str
    out: str | None = None  # predictions JSONL
    beams: int = 10
    k: int = 10  # report acc@1..k
    actors: int = 1
    batch_size: int = 32
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    progress: bool = True


def evaluate(cfg: EvalConfig) -> dict:
    """The summary (mentions, acc@1..k, gold missing from the KB); predictions to `cfg.out`."""
    if not 1 <= cfg.k <= cfg.beams:
        raise ValueError(f"need 1 <= k <= beams, got k={cfg.k}, beams={cfg.beams}")
    model_dir, _, trie, shards = search_inputs(cfg.model, cfg.trie, cfg.data)
    jobs = [(i, shard) for i, shard in enumerate(shards)]
    results = run_pool("predict", jobs, linker_spec(model_dir, cfg.trie, cfg.beams, cfg.batch_size,
                                                    cfg.gpus_per_actor), MineSettings(), cfg.actors,
                       cfg.cpus_per_actor, cfg.gpus_per_actor, total_inputs=sum(s.count for s in shards),
                       progress=cfg.progress, desc="evaluate")
    records = [r for i in range(len(shards)) for r in results[i]["records"]]
    kb_cuis = set(pc.unique(pc.list_flatten(trie.names()["cuis"])).to_pylist())
    summary = accuracy(records, cfg.k, kb_cuis)
    if cfg.out:
        with atomic_path(cfg.out) as tmp:
            with open(tmp, "w") as f:
                for record in records:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    summary["model"] = str(model_dir)
    return summary
