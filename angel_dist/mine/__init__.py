"""Mining: the model's constrained top-k search over an example shard set, on a Ray actor pool,
written as a DPO pair shard set (one pair shard per input shard) with reference log-probs, and
as `pairs.parquet` in TRL's preference format."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from angel_dist.atomic import atomic_path
from angel_dist.decode.beam import Stop
from angel_dist.mine.pool import run_pool
from angel_dist.mine.work import FAULT_ENV, MineSettings
from angel_dist.shards.reader import iter_shard
from angel_dist.shards.verify import verified_shard_sets
from angel_dist.shards.writer import ShardSetPlan, finish, prepare, read_manifest
from angel_dist.typed import (ConfigError, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Share,
                              check_fields)

TRL_FILE = "pairs.parquet"


@dataclass
class MineConfig:
    model: str  # a model directory or a training run directory (its newest checkpoint)
    trie: str
    data: str  # an example shard set
    out: str  # the pair shard set
    actors: PositiveInt = 1
    beams: PositiveInt = 10
    dpo_topk: PositiveInt = 5
    gold_fallback: bool = False
    round: NonNegativeInt = 0
    fraction: Share = 1.0
    seed: NonNegativeInt = 0
    chunk: NonNegativeInt = 0
    chunks: PositiveInt = 1
    batch_size: PositiveInt = 32  # inputs per beam-search batch
    stop: Stop = "exact"  # the search's stopping rule (angel_dist/decode/beam.py); "fairseq" is GenBioEL's and ANGEL's
    temperature: PositiveFloat = 1.0  # divides the search's logits; ANGEL decodes with 0.7
    cpus_per_actor: PositiveFloat = 1.0
    gpus_per_actor: NonNegativeFloat = 0.0
    placement: Literal["PACK", "SPREAD"] = "PACK"  # SPREAD: the actors on as many nodes as possible
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        check_fields(self)
        if self.dpo_topk > self.beams:
            raise ConfigError("dpo_topk", f"expected at most beams ({self.beams}), got {self.dpo_topk}")
        if self.chunk >= self.chunks:
            raise ConfigError("chunk", f"expected less than chunks ({self.chunks}), got {self.chunk}")


def linker_spec(model_dir: Path, trie: str, beams: int, batch_size: int, gpus: float, stop: Stop = "exact",
                temperature: float = 1.0) -> dict:
    # Absolute: actors on other nodes start in other working directories.
    return {"model_dir": str(Path(model_dir).resolve()), "trie_dir": str(Path(trie).resolve()), "beams": beams,
            "batch_size": batch_size,
            "device": "cuda" if gpus > 0 else "cpu", "stop": stop, "temperature": temperature}


def search_inputs(model: str, trie_dir: str, data: str, progress: bool = True):
    """(model directory, tokenizer fingerprint, trie, example shards) for a search over `data`,
    checking that the trie and the shards were built with the model's tokenizer; the shards
    verified here, once for all actors (shards/verify.py)."""
    from angel_dist.tokenizer import load_tokenizer, tokenizer_fingerprint
    from angel_dist.train.export import model_directory
    from angel_dist.trie import Trie

    model_dir = model_directory(model)
    fingerprint = tokenizer_fingerprint(load_tokenizer(model_dir))
    trie = Trie.load(trie_dir)
    trie.check_tokenizer(fingerprint)
    shards, kind = verified_shard_sets(data, fingerprint, progress)  # once here, not by every actor
    if kind != "examples":
        raise ValueError(f"{data} holds {kind}; searches read example shards")
    return model_dir, fingerprint, trie, shards


def mine(cfg: MineConfig, on_shard=None, on_ready=None) -> dict:
    """Mine pairs; a rerun skips complete pair shards. Returns the pair set's manifest.
    `on_shard(result)` is called in the driver as each pair shard completes, `on_ready()` once
    every actor holds its model (the search's own time starts there)."""
    from angel_dist.train.export import model_fingerprint

    model_dir, fingerprint, trie, shards = search_inputs(cfg.model, cfg.trie, cfg.data, cfg.progress)
    data = read_manifest(cfg.data)
    settings = MineSettings(dpo_topk=cfg.dpo_topk, gold_fallback=cfg.gold_fallback, round=cfg.round,
                            fraction=cfg.fraction, seed=cfg.seed, chunk=cfg.chunk, chunks=cfg.chunks)
    config = {"model_fingerprint": model_fingerprint(model_dir), "data_config_hash": data["config_hash"],
              "trie_kb": trie.meta.get("kb_fingerprint"), "beams": cfg.beams, "stop": cfg.stop,
              "temperature": cfg.temperature,
              **{k: v for k, v in asdict(settings).items() if k not in ("search_chunk", "ref_batch_size")}}
    plan = ShardSetPlan(Path(cfg.out), "pairs", len(shards), config,
                        {"tokenizer_fingerprint": fingerprint, "kb_fingerprint": data.get("kb_fingerprint")})
    pending = prepare(plan, cfg.overwrite)
    jobs = [(i, shards[i], str(plan.out), plan.config_hash) for i in pending]
    run_pool("mine", jobs, linker_spec(model_dir, cfg.trie, cfg.beams, cfg.batch_size, cfg.gpus_per_actor, cfg.stop,
                                       cfg.temperature),
             settings, cfg.actors, cfg.cpus_per_actor, cfg.gpus_per_actor, fault=os.environ.get(FAULT_ENV) or None,
             fault_dir=str(plan.out), total_inputs=sum(shards[i].count for i in pending), progress=cfg.progress,
             desc="mine", unit="example", on_result=on_shard, on_ready=on_ready, placement=cfg.placement)
    manifest = finish(plan)
    write_trl_parquet(plan.out)
    return manifest


def write_trl_parquet(pair_set: str | Path) -> Path:
    """The pairs in TRL's standard preference format, loadable with `datasets.load_dataset("parquet",
    ...)` and trainable with TRL's DPOTrainer as they are: `prompt` is what the model reads before
    the name (the marked context, then the forced prefix `mention is`), `chosen` and `rejected`
    the completions (` name`; TRL appends the eos), `ref_chosen_logps` and `ref_rejected_logps` the
    log-probs of those completions, eos included, under the model that mined them (the one
    log-prob function). Also the pair's `key`, `source_key`, `context` and `prefix` (the prompt's
    two parts), gold `cuis`, beam ranks and `round`."""
    shards, _ = verified_shard_sets(pair_set, progress=False)  # and recorded, for the training that reads it next
    rows = {k: [] for k in ("key", "prompt", "chosen", "rejected", "ref_chosen_logps", "ref_rejected_logps",
                            "source_key", "context", "prefix", "cuis", "chosen_rank", "rejected_rank", "round")}
    for shard in shards:
        for s in iter_shard(shard):
            for k, v in (("key", s["__key__"]), ("prompt", f"{s['prompt']} {s['prefix']}"),
                         ("chosen", f" {s['chosen']}"), ("rejected", f" {s['rejected']}"),
                         ("ref_chosen_logps", s["ref_chosen_logp"]), ("ref_rejected_logps", s["ref_rejected_logp"]),
                         ("context", s["prompt"])):
                rows[k].append(v)
            for k in ("source_key", "prefix", "cuis", "chosen_rank", "rejected_rank", "round"):
                rows[k].append(s[k])
    out = Path(pair_set) / TRL_FILE
    with atomic_path(out) as tmp:
        pq.write_table(pa.table(rows), tmp)
    return out
