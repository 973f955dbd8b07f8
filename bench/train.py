"""Benchmark: the training engine against a plain PyTorch loop, 1 vs 2 workers, DPO with stored
reference log-probs against a live reference model, the reader's share of a step, and the aten
operations an optimizer step dispatches outside the model's forward and backward.

    python bench/train.py                      # CPU: HPO examples, the `small` preset; op counts of `large`
    python bench/train.py --part ops           # only the op counts (`large`, micro-batch 2)
    python bench/train.py --part engine        # only the plain loop against one engine worker
    python bench/train.py --gpu --model large --batch-size 512 --steps 40 --ds zero2   # one GPU

Targets (issues 4 and 22): engine with one worker >= 0.95x the plain loop's tokens/s (same
threads and batch); two workers >= 1.7x one worker (one CPU each); DPO with stored reference
log-probs <= 0.8x the step time of a live reference, with one model's memory instead of two; an
optimizer step of `large` dispatching at most 10% as many aten operations outside forward and
backward as inside (counts that do not depend on the machine); on a GPU, `large` NLL pretraining
under ZeRO-2 in bf16 at >= 40% MFU. Stages run in subprocesses so that peak memory is their own.
Prints a JSON report.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_data(work: str) -> dict:
    """Examples of the first 3000 HPO concepts (real names and definitions) and a tokenizer."""
    from angel_dist.corpus.build import PretrainCorpusConfig, build_pretrain_corpus
    from angel_dist.kb.build import KbBuildConfig, build_kb
    from angel_dist.kb.table import read_kb, read_kb_meta, write_kb
    from angel_dist.tokenizer import train_tokenizer

    w = Path(work)
    build_kb(KbBuildConfig(format="obo", source="hpo", out=str(w / "hpo.parquet")), progress=False)
    write_kb(read_kb(w / "hpo.parquet").slice(0, 3000), w / "kb.parquet", read_kb_meta(w / "hpo.parquet"))
    train_tokenizer(w / "kb.parquet", 8000, w / "tok", progress=False)
    manifest = build_pretrain_corpus(w / "kb.parquet", str(w / "tok"), w / "examples", PretrainCorpusConfig(shards=8),
                                     workers=2, progress=False)
    return {"examples": manifest["total"]}


def stage_engine(work: str, model: str, workers: int, batch: int, steps: int, ds: str) -> dict:
    from angel_dist.train import TrainConfig
    from angel_dist.train.launch import run_training
    from angel_dist.train.metrics import read_metrics
    from angel_dist.train.throughput import steady_rates

    w = Path(work)
    out = w / f"engine-{ds}-{workers}w"
    shutil.rmtree(out, ignore_errors=True)  # a finished run left there would only be resumed
    cfg = TrainConfig(data=[str(w / "examples")], tokenizer=str(w / "tok"), model=model, out=str(out),
                      ds_config=str(ROOT / "ds_configs" / f"{ds}.json"), workers=workers, batch_size=batch,
                      max_steps=steps, log_every=steps // 3, save_every=10 ** 9, progress=False, loader_workers=1,
                      cpus_per_worker=1.0)
    run_training(cfg)
    return {"workers": workers, "ds_config": ds, **steady_rates(read_metrics(out))}


def _batches(work: str, batch: int, n: int, kind: str = "examples"):
    from angel_dist.shards.reader import ReaderConfig, ShardLoader
    from angel_dist.tokenizer import load_tokenizer
    from angel_dist.train.config import TrainConfig

    tok = load_tokenizer(Path(work) / "tok")
    # The engine's reader settings (TrainConfig's defaults), so the plain loop trains on the
    # batches a one-worker engine gets.
    d = TrainConfig(data=["-"])
    loader = ShardLoader(Path(work) / kind, ReaderConfig(batch_size=batch, seed=d.seed, shuffle_buffer=d.shuffle_buffer,
                                                         bucket=d.bucket), num_workers=1,
                         pad_id=tok.pad_token_id, decoder_start_id=tok.eos_token_id)
    return tok, loader, itertools.islice(iter(loader), n)


def stage_plain(work: str, model_name: str, batch: int, steps: int) -> dict:
    """The same model, data and objective in a bare PyTorch loop (one thread, AdamW)."""
    import torch

    from angel_dist.model import load_model
    from angel_dist.train.config import TrainConfig
    from angel_dist.train.loop import batch_tokens, nll_step

    torch.set_num_threads(1)
    tok, _, batches = _batches(work, batch, steps)
    model = load_model(model_name, tok).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.01)
    cfg = TrainConfig(data=["-"])
    warm = steps // 3
    tokens, waited, t0 = 0, 0.0, None
    it = iter(batches)
    for i in range(steps):
        t_wait = time.perf_counter()
        b = next(it)
        if i >= warm:
            waited += time.perf_counter() - t_wait
        if i == warm:
            t0, tokens, waited = time.perf_counter(), 0, 0.0
        loss, _ = nll_step(model, b, cfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch_tokens(b)
    elapsed = time.perf_counter() - t0
    return {"tokens_per_s": tokens / elapsed, "reader_share_of_step": waited / elapsed,
            "parameters": sum(p.numel() for p in model.parameters())}


def stage_pairs(work: str) -> dict:
    """Pairs: chosen = the example's name, rejected = another concept's; their stored reference
    log-probs come from the tiny preset (for step time only their presence matters)."""
    import numpy as np
    import torch

    from angel_dist.model import load_model, score
    from angel_dist.pairs import Pair, write_pair_set
    from angel_dist.shards.reader import iter_shard, open_shard_sets
    from angel_dist.tokenizer import load_tokenizer, tokenizer_fingerprint

    tok = load_tokenizer(Path(work) / "tok")
    model = load_model("tiny", tok).eval()
    shards, _ = open_shard_sets(Path(work) / "examples")
    samples = [s for sh in shards[:2] for s in iter_shard(sh)][:2000]
    pairs = []
    for i, s in enumerate(samples):
        other = samples[(i + len(samples) // 2) % len(samples)]
        logps = []
        for target in (s["target_ids"], other["target_ids"]):
            dec = torch.tensor(np.concatenate([[tok.eos_token_id], s["prefix_ids"], target]))[None]
            tmask = torch.arange(dec.shape[1])[None] > len(s["prefix_ids"])
            src = torch.tensor(s["source_ids"].astype(np.int64))[None]
            with torch.no_grad():
                logps.append(score(model, torch.ones_like(src, dtype=torch.bool), dec, torch.ones_like(dec, dtype=torch.bool),
                                   tmask, source_ids=src).logp.item())
        pairs.append(Pair(key=f"p{i}", source_key=s["__key__"], prompt=s["source"], prefix=s["prefix"],
                          chosen=s["target"], rejected=other["target"], cuis=s["cuis"], source_ids=s["source_ids"],
                          prefix_ids=s["prefix_ids"], chosen_ids=s["target_ids"], rejected_ids=other["target_ids"],
                          ref_chosen_logp=logps[0], ref_rejected_logp=logps[1]))
    write_pair_set(Path(work) / "pairs", pairs, 4, {"bench": True},
                   {"tokenizer_fingerprint": tokenizer_fingerprint(tok), "kb_fingerprint": "bench"})
    return {"pairs": len(pairs)}


def stage_dpo(work: str, model_name: str, batch: int, steps: int, live: bool) -> dict:
    """DPO steps with stored reference log-probs, or with a live reference model scoring them."""
    import torch

    from angel_dist.model import load_model, score
    from angel_dist.train.config import TrainConfig
    from angel_dist.train.loop import dpo_step

    torch.set_num_threads(1)
    tok, _, batches = _batches(work, batch, steps, "pairs")
    rss0 = _peak_rss_mb()
    policy = load_model(model_name, tok).eval()  # dropout off, as in the engine
    reference = load_model(model_name, tok).eval().requires_grad_(False) if live else None
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    cfg = TrainConfig(data=["-"], objective="dpo")
    warm, t0 = steps // 3, None
    for i, b in enumerate(batches):
        if i == warm:
            t0 = time.perf_counter()
        if live:
            with torch.no_grad():
                rows = [score(reference, b["source_mask"], b[f"{r}_decoder_ids"], b[f"{r}_decoder_mask"],
                              b[f"{r}_target_mask"], source_ids=b["source_ids"]).logp for r in ("chosen", "rejected")]
            b = {**b, "ref_chosen_logp": rows[0], "ref_rejected_logp": rows[1]}
        loss, _ = dpo_step(policy, b, cfg)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    per_step = (time.perf_counter() - t0) / (steps - warm)
    models = 2 if live else 1
    return {"live_reference": live, "step_s": per_step, "peak_rss_mb": _peak_rss_mb(),
            "rss_after_data_mb": rss0,
            "model_bytes": models * sum(p.numel() * p.element_size() for p in policy.parameters())}


def stage_rank(work: str, model_name: str, batch: int, steps: int, ds: str) -> dict:
    """One engine rank (the loop and its DeepSpeed strategy) in this process, on its GPU when it
    has one, world size 1: `train_worker` holds no Ray, so a step is what a Ray Train worker
    runs, without Ray's start-up in the figure (and where Ray is not installed)."""
    import socket

    import torch

    from angel_dist.model import load_model
    from angel_dist.tokenizer import load_tokenizer
    from angel_dist.train import TrainConfig
    from angel_dist.train.loop import train_worker
    from angel_dist.train.metrics import read_metrics
    from angel_dist.train.throughput import model_flops_per_token, peak_flops, steady_rates

    w = Path(work)
    gpu = torch.cuda.is_available()
    out = w / f"rank-{model_name}-{ds}-{batch}"
    shutil.rmtree(out, ignore_errors=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                      LOCAL_WORLD_SIZE="1")
    cfg = TrainConfig(data=[str(w / "examples")], tokenizer=str(w / "tok"), model=model_name, out=str(out),
                      ds_config=str(ROOT / "ds_configs" / f"{ds}.json"), workers=1, gpus_per_worker=1.0 if gpu else 0.0,
                      cpus_per_worker=float(min(os.cpu_count() or 1, 4)), batch_size=batch, max_steps=steps,
                      log_every=max(steps // 4, 1), save_every=10 ** 9, progress=False, loader_workers=4 if gpu else 1)
    t = time.perf_counter()
    train_worker({"config": cfg.to_dict(), "fault": None})
    seconds = time.perf_counter() - t
    metrics = read_metrics(out)
    rates = steady_rates(metrics)
    tokens_per_s = rates["tokens_per_s"]
    losses = [m["loss"] for m in metrics]
    model = load_model(model_name, load_tokenizer(w / "tok"))
    flops_token = model_flops_per_token(model, w / "examples")
    name = torch.cuda.get_device_name() if gpu else "cpu"
    peak = peak_flops(name)
    report = {"device": name, "model": model_name, "parameters": sum(p.numel() for p in model.parameters()),
              "ds_config": ds, "bf16": gpu, "micro_batch": batch, "steps": steps, **rates,
              "model_tflops_per_s": tokens_per_s * flops_token / 1e12, "flops_per_token": flops_token,
              "mfu": tokens_per_s * flops_token / peak if peak else None, "peak_flops": peak,
              "run_seconds_with_start_and_final_checkpoint": seconds, "loss_first_last": [losses[0], losses[-1]]}
    if gpu:
        report["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return report


def stage_ops(work: str, model_name: str, batch: int, ds: str, settings: str) -> dict:
    """aten operations one optimizer step of one engine rank dispatches (world size 1 in this
    process, fp32 on CPU), split into the model's forward and backward and the rest (see
    angel_dist/train/opcount.py). `settings`: `strategy` (the project's: the strategy's gradient
    path where it owns one, fused AdamW) or `deepspeed` (DeepSpeed's own per-parameter stage-0 or
    -1 path, torch's AdamW one tensor at a time) or `noncontiguous` (the project's, with ZeRO's
    `contiguous_gradients` off: no copy of each gradient into a contiguous bucket)."""
    import socket

    import torch.distributed as dist

    from angel_dist.model import load_model
    from angel_dist.train.opcount import step_op_counts
    from angel_dist.train.strategy import ds_config, init_distributed

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                      LOCAL_WORLD_SIZE="1", DS_ACCELERATOR="cpu")
    dist.init_process_group("gloo")
    init_distributed(on_gpu=False, node_local=True)
    tok, _, batches = _batches(work, batch, 1)
    config = ds_config(ROOT / "ds_configs" / f"{ds}.json", batch, 1, 1.0, 3e-5, 0.01, on_gpu=False)
    if settings == "deepspeed":
        config["optimizer"]["params"]["fused"] = False
    if settings == "noncontiguous":
        config["zero_optimization"]["contiguous_gradients"] = False
    counts = step_op_counts(load_model(model_name, tok).train(), next(batches), config, settings != "deepspeed")
    return {"model": model_name, "micro_batch": batch, "ds_config": ds, "settings": settings, **counts}


def run_stage(name: str, *args) -> dict:
    cmd = [sys.executable, __file__, "--stage", name, *map(str, args)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"stage {name} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-8000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


STAGES = {"data": (stage_data, (str,)), "engine": (stage_engine, (str, str, int, int, int, str)),
          "plain": (stage_plain, (str, str, int, int)), "pairs": (stage_pairs, (str,)),
          "dpo": (stage_dpo, (str, str, int, int, lambda v: v == "True")),
          "rank": (stage_rank, (str, str, int, int, str)), "ops": (stage_ops, (str, str, int, str, str))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="small")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=180, help="steps of one worker (two take half as many, on the same samples)")
    p.add_argument("--work-dir", default=None)
    p.add_argument("--gpu", action="store_true", help="only one rank in one process, on its GPU (CPU when none): tokens/s and MFU")
    p.add_argument("--ds", default="zero2", help="ds_configs/ template of the --gpu run")
    p.add_argument("--part", choices=("all", "engine", "ops"), default="all",
                   help="engine: only the plain loop against one engine worker; ops: only the operation counts")
    p.add_argument("--ops-model", default="large", help="preset whose optimizer step's aten operations are counted")
    p.add_argument("--ops-batch", type=int, default=2, help="micro-batch of the operation counts")
    p.add_argument("--stage", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        fn, casts = STAGES[args.stage[0]]
        print(json.dumps(fn(*[c(v) for c, v in zip(casts, args.stage[1:])])))
        return
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="angel-bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"cpus": os.cpu_count(), "model": args.model, "batch_size": args.batch_size, "steps": args.steps}
    if not (work / "examples" / "manifest.json").exists():
        report["data"] = run_stage("data", work)
    m, b, n = args.model, args.batch_size, args.steps
    if args.gpu:
        report["rank"] = run_stage("rank", work, m, b, n, args.ds)
        print(json.dumps(report, indent=2))
        return
    if args.part in ("all", "ops"):
        # Stage 0 and 1 on DeepSpeed's own paths (stage 0's as before issue 22) and on the
        # strategy's, side by side; ZeRO-2, whose gradients DeepSpeed partitions through
        # per-parameter hooks, beside them, as shipped and with its contiguous gradient buckets off.
        report["ops_per_step"] = {f"{ds}_{settings}": run_stage("ops", work, args.ops_model, args.ops_batch, ds, settings)
                                  for ds, settings in (("ddp", "deepspeed"), ("ddp", "strategy"), ("zero1", "deepspeed"),
                                                       ("zero1", "strategy"), ("zero2", "strategy"),
                                                       ("zero2", "noncontiguous"))}
        if args.part == "ops":
            print(json.dumps(report, indent=2))
            return
    # One rank has nothing to shard: ZeRO stage 0 (ddp.json) is the engine's plain data-parallel
    # mode; ZeRO-2's flattened fp32 copies are reported beside it. The plain loop, 1 and 2
    # workers alternate, twice, best of each: runs on this kind of machine differ by a fifth
    # from one minute to the next. Every run reads the same samples in the same order: n
    # micro-batches of one worker are n / 2 global batches of two (the reader hands rank r the
    # r-th slice of each), and the warm-up interval each leaves out covers the same samples too.
    runs: dict[str, list[dict]] = {"plain": [], "1w": [], "2w": []}
    for _ in range(2):
        runs["plain"].append(run_stage("plain", work, m, b, n))
        for w in (1,) if args.part == "engine" else (1, 2):
            runs[f"{w}w"].append(run_stage("engine", work, m, w, b, n // w, "ddp"))
    report["plain_loop"], report["engine_1w"] = (max(runs[k], key=lambda r: r["tokens_per_s"]) for k in ("plain", "1w"))
    report["runs_tokens_per_s"] = {k: [r["tokens_per_s"] for r in v] for k, v in runs.items() if v}
    report["engine_over_plain"] = report["engine_1w"]["tokens_per_s"] / report["plain_loop"]["tokens_per_s"]
    if args.part == "engine":
        print(json.dumps(report, indent=2))
        return
    report["engine_2w"] = max(runs["2w"], key=lambda r: r["tokens_per_s"])
    report["two_over_one"] = report["engine_2w"]["tokens_per_s"] / report["engine_1w"]["tokens_per_s"]
    report["engine_zero2_1w"] = run_stage("engine", work, m, 1, b, n, "zero2")
    report["engine_zero2_2w"] = run_stage("engine", work, m, 2, b, n // 2, "zero2")
    report["zero2_over_plain"] = report["engine_zero2_1w"]["tokens_per_s"] / report["plain_loop"]["tokens_per_s"]
    report["zero2_two_over_one"] = report["engine_zero2_2w"]["tokens_per_s"] / report["engine_zero2_1w"]["tokens_per_s"]
    # The strategy's ZeRO-1 (its collectives through the shared-memory all-reduce on one node) beside them.
    report["engine_zero1_2w"] = run_stage("engine", work, m, 2, b, n // 2, "zero1")
    report["zero1_over_zero2_2w"] = report["engine_zero1_2w"]["tokens_per_s"] / report["engine_zero2_2w"]["tokens_per_s"]
    if not (work / "pairs" / "manifest.json").exists():
        run_stage("pairs", work)
    stored, live = (run_stage("dpo", work, m, b, n, flag) for flag in (False, True))
    report["dpo"] = {"stored_reference": stored, "live_reference": live,
                     "step_time_stored_over_live": stored["step_s"] / live["step_s"],
                     "model_bytes_stored_over_live": stored["model_bytes"] / live["model_bytes"]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
