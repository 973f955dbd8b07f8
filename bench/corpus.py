"""Benchmark: KB-guided pretraining corpus of a synthetic UMLS-scale KB, written to shards on Ray
with 1 and with 2 workers, and the training reader against what a tiny model's step consumes.

    python bench/corpus.py --concepts 1300000        # about 1M KB concepts, 3M examples

Targets (issue 3): 1M concepts (~3M most_sim examples) to shards in <= 10 min; 2 workers >=
1.7x one worker; peak RSS per worker <= 2 GB; the reader >= 10x the samples/s of a training step.
Every stage runs in a fresh subprocess (its own local Ray, bound to 127.0.0.1, with as many CPUs
as workers), so the runs do not share warm workers or memory. Prints a JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from kb_trie import run_stage as run_kb_trie_stage  # noqa: E402  (bench scripts are not a package)


def stage_corpus(kb: str, tok: str, out: str, workers: int, scheme: str) -> dict:
    from angel_dist.corpus.build import PretrainCorpusConfig, build_pretrain_corpus

    t0 = time.perf_counter()
    manifest = build_pretrain_corpus(kb, tok, out, PretrainCorpusConfig(mention_scheme=scheme), workers=workers,
                                     progress=False)
    seconds = time.perf_counter() - t0
    peaks = manifest["run"]["workers"]
    return {"workers": workers, "seconds": seconds, "examples": manifest["total"], "shards": manifest["n_shards"],
            "examples_per_s": manifest["total"] / seconds, "worker_processes": len(peaks),
            "peak_rss_mb_per_worker": max(peaks.values()), "bytes": sum(p.stat().st_size for p in Path(out).iterdir()),
            "truncated_sources": manifest["stats"].get("truncated_sources", 0)}


def _tiny_model(vocab_size: int):
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(vocab_size=vocab_size, d_model=128, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=512,
                        decoder_ffn_dim=512, max_position_embeddings=1024)
    return BartForConditionalGeneration(config)


def stage_reader(shards: str, tok: str, batch_size: int, batches: int) -> dict:
    """Samples/s of the reader alone, then of reader + tiny-model training steps, side by side."""
    import itertools

    import torch

    from angel_dist.shards.reader import ReaderConfig, ShardLoader
    from angel_dist.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tok)
    config = ReaderConfig(batch_size=batch_size, seed=0)

    def loader():
        return ShardLoader(shards, config, pad_id=tokenizer.pad_token_id, decoder_start_id=tokenizer.eos_token_id)

    t0 = time.perf_counter()
    n = sum(len(b["keys"]) for b in itertools.islice(loader(), batches))
    reader_s = time.perf_counter() - t0

    torch.manual_seed(0)
    model = _tiny_model(len(tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    steps = max(batches // 20, 10)
    data = list(itertools.islice(loader(), steps + 2))
    model.train()

    def step(batch):
        logits = model(input_ids=batch["source_ids"], attention_mask=batch["source_mask"],
                       decoder_input_ids=batch["decoder_ids"], decoder_attention_mask=batch["decoder_mask"]).logits
        mask = batch["target_mask"][:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1][mask], batch["decoder_ids"][:, 1:][mask],
                                                 label_smoothing=0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in data[:2]:  # warm-up
        step(batch)
    t0 = time.perf_counter()
    trained = 0
    for batch in data[2:]:
        step(batch)
        trained += len(batch["keys"])
    train_s = time.perf_counter() - t0
    reader_rate, train_rate = n / reader_s, trained / train_s
    return {"batch_size": batch_size, "reader_samples": n, "reader_samples_per_s": reader_rate,
            "train_steps": steps, "train_samples_per_s": train_rate, "reader_over_train": reader_rate / train_rate,
            "torch_threads": torch.get_num_threads(),
            "model_parameters": sum(p.numel() for p in model.parameters())}


def run_stage(name: str, *args) -> dict:
    import subprocess

    cmd = [sys.executable, __file__, "--stage", name, *map(str, args)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # always a fresh local Ray
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concepts", type=int, default=1_300_000, help="synthetic UMLS concepts (about 77%% reach the KB)")
    p.add_argument("--names-per-concept", type=float, default=5.5, help="mean MRCONSO rows per synthetic concept")
    p.add_argument("--vocab-size", type=int, default=32_000)
    p.add_argument("--scheme", default="most_sim", choices=["most_sim", "random"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--reader-batches", type=int, default=3000)
    p.add_argument("--work-dir", default=None, help="keep the synthetic release and outputs here")
    p.add_argument("--stage", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        name, rest = args.stage[0], args.stage[1:]
        fn = {"corpus": stage_corpus, "reader": stage_reader}[name]
        casts = {"corpus": (str, str, str, int, str), "reader": (str, str, int, int)}[name]
        print(json.dumps(fn(*[c(v) for c, v in zip(casts, rest)])))
        return

    from synth_umls import write_synthetic_umls

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="angel-bench-corpus-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"cpus": os.cpu_count()}
    meta_dir = work / "META"
    if not (meta_dir / "MRCONSO.RRF").exists():
        t0 = time.perf_counter()
        report["synth"] = write_synthetic_umls(meta_dir, args.concepts, seed=0,
                                               names_per_concept=args.names_per_concept)
        report["synth"]["seconds"] = time.perf_counter() - t0
    kb, tok = work / "kb.parquet", work / "tok"
    if not kb.exists():
        report["kb_build"] = run_kb_trie_stage("kb", meta_dir, kb)
    if not (tok / "tokenizer.json").exists():
        report["tokenizer_train"] = run_kb_trie_stage("tokenizer", kb, tok, args.vocab_size)
    runs = {}
    for workers in (1, 2):
        out = work / f"shards-{workers}w"
        shutil.rmtree(out, ignore_errors=True)
        runs[workers] = run_stage("corpus", kb, tok, out, workers, args.scheme)
        print(json.dumps({"corpus": runs[workers]}), file=sys.stderr, flush=True)
    identical = all((work / "shards-1w" / f.name).read_bytes() == f.read_bytes()
                    for f in sorted((work / "shards-2w").iterdir()) if f.suffix == ".json" and f.name != "manifest.json")
    report["corpus"] = {"one_worker": runs[1], "two_workers": runs[2],
                        "two_over_one": runs[2]["examples_per_s"] / runs[1]["examples_per_s"],
                        "shard_records_identical": identical}
    report["reader"] = run_stage("reader", work / "shards-2w", tok, args.batch_size, args.reader_batches)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
