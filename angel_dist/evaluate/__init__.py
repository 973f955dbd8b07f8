"""Evaluation: acc@1..k of a model on an example shard set (benchmark mentions), with one
prediction record per mention in ANGEL's result layout."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow.compute as pc

from angel_dist.atomic import atomic_path
from angel_dist.decode.beam import STOPS, Stop
from angel_dist.evaluate.metrics import accuracy, format_table, hit_at
from angel_dist.mine import linker_spec, search_inputs
from angel_dist.mine.pool import run_pool
from angel_dist.mine.work import MineSettings

__all__ = ["EvalConfig", "accuracy", "evaluate", "evaluate_sets", "format_table", "hit_at"]


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
    placement: str = "PACK"  # SPREAD: the actors on as many nodes as possible
    stop: Stop = "exact"  # the search's stopping rule; "fairseq" is GenBioEL's and ANGEL's
    temperature: float = 1.0  # divides the search's logits; ANGEL decodes with 0.7
    progress: bool = True


def evaluate(cfg: EvalConfig) -> dict:
    """The summary (mentions, acc@1..k, gold missing from the KB); predictions to `cfg.out`."""
    return evaluate_sets(cfg, {"data": cfg.data}, {"data": cfg.out} if cfg.out else {})["data"]


def evaluate_sets(cfg: EvalConfig, sets: dict[str, str], outs: dict[str, str] | None = None) -> dict[str, dict]:
    """Several example sets (e.g. dev and test) in one actor pool: {name: summary}."""
    if cfg.stop not in STOPS:
        raise ValueError(f"stop must be one of {STOPS}, got {cfg.stop!r}")
    if not cfg.temperature > 0:
        raise ValueError(f"temperature must be > 0, got {cfg.temperature}")
    if not 1 <= cfg.k <= cfg.beams:
        raise ValueError(f"need 1 <= k <= beams, got k={cfg.k}, beams={cfg.beams}")
    jobs, owner, model_dir, trie = [], [], None, None
    for name, data in sets.items():
        model_dir, _, trie, shards = search_inputs(cfg.model, cfg.trie, data, cfg.progress)
        for shard in shards:
            jobs.append((len(jobs), shard))
            owner.append(name)
    spec = linker_spec(model_dir, cfg.trie, cfg.beams, cfg.batch_size, cfg.gpus_per_actor, cfg.stop, cfg.temperature)
    results = run_pool("predict", jobs, spec, MineSettings(), cfg.actors,
                       cfg.cpus_per_actor, cfg.gpus_per_actor, total_inputs=sum(j[1].count for j in jobs),
                       progress=cfg.progress, desc="evaluate", placement=cfg.placement)
    kb_cuis = set(pc.unique(pc.list_flatten(trie.names()["cuis"])).to_pylist()) if trie is not None else set()
    out = {}
    for name in sets:
        records = [r for i in range(len(jobs)) if owner[i] == name for r in results[i]["records"]]
        out[name] = {**accuracy(records, cfg.k, kb_cuis), "model": str(model_dir)}
        if (outs or {}).get(name):
            with atomic_path(outs[name]) as tmp:
                with open(tmp, "w") as f:
                    for record in records:
                        f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return out
