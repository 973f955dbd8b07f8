"""Benchmark: `kb build` on a synthetic UMLS release, trie build, trie size, mask throughput,
and the memory a second process adds when it opens the same trie.

    python bench/kb_trie.py --concepts 2500000          # about 10M MRCONSO rows

Every stage runs in a fresh subprocess so that its peak RSS is its own. Prints a JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _private_mb() -> float:
    """Private (unshared) resident memory of this process, from smaps_rollup."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


# -- stages, each run in its own process ------------------------------------------------

def stage_kb(meta_dir: str, out: str) -> dict:
    from angel_dist.kb.build import KbBuildConfig, build_kb

    t0 = time.perf_counter()
    meta, _ = build_kb(KbBuildConfig(format="umls", source=meta_dir, out=out), progress=False)
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb(), "concepts": meta["concepts"],
            "names": meta["names"], "mrconso_rows": meta["counts"]["mrconso_rows"]}


def stage_tokenizer(kb: str, out: str, vocab: int) -> dict:
    from angel_dist.tokenizer import train_tokenizer

    t0 = time.perf_counter()
    train_tokenizer(kb, vocab, out, progress=False)
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb()}


def stage_trie(kb: str, tokenizer: str, out: str) -> dict:
    from angel_dist.tokenizer import load_tokenizer
    from angel_dist.trie.build import build_trie

    t0 = time.perf_counter()
    meta = build_trie(kb, load_tokenizer(tokenizer), out, progress=False)
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb(), **meta}


def stage_dict_trie(trie_dir: str, sample: int) -> dict:
    """Bytes per node of GenBioEL's dict-of-dicts trie and of ours on the same sample of names."""
    import numpy as np

    from angel_dist.tokenizer import load_tokenizer
    from angel_dist.trie import Trie, build_csr
    from angel_dist.trie.build import encode_names

    trie = Trie.load(trie_dir)
    names = trie.names()["name"]
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(names), size=min(sample, len(names)), replace=False))
    tokenizer = load_tokenizer(trie.meta["tokenizer"])
    tokens, lengths = encode_names(names.take(pick).to_pylist(), tokenizer, trie.eos, progress=False)
    ours = build_csr(tokens, lengths, trie.eos)
    our_bytes = ours.offsets.nbytes + ours.child_tokens.nbytes + ours.child_nodes.nbytes
    sequences = np.split(tokens.tolist(), np.cumsum(lengths)[:-1])
    before = _rss_mb()
    root: dict = {}
    for seq in sequences:
        node = root
        for token in seq:
            node = node.setdefault(token, {})
    dict_bytes = (_rss_mb() - before) * 2**20
    return {"sample_names": len(pick), "nodes": ours.n_nodes, "ours_bytes_per_node": our_bytes / ours.n_nodes,
            "dict_bytes_per_node": dict_bytes / ours.n_nodes, "dict_over_ours": dict_bytes / our_bytes}


def stage_mask(trie_dir: str, batch: int, repeats: int) -> dict:
    import torch

    from angel_dist.trie import Trie

    torch.manual_seed(0)
    trie = Trie.load(trie_dir)
    # States from random walks: pick a random allowed token at each step.
    states = trie.start(batch)
    walked = [states]
    for _ in range(6):
        mask = trie.allowed_mask(states)
        alive = mask.any(1)
        choice = torch.multinomial(mask.float() + (~alive).float().unsqueeze(1), 1).squeeze(1)
        states = torch.where(alive, trie.advance(states, choice), states)
        walked.append(states)
    states = torch.cat(walked)[torch.randperm(batch * len(walked))[:batch]]
    tokens = torch.multinomial(trie.allowed_mask(states).float() + 1e-3, 1).squeeze(1)
    t0 = time.perf_counter()
    for _ in range(repeats):
        trie.allowed_mask(states)
    mask_s = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        trie.advance(states, tokens)
    advance_s = (time.perf_counter() - t0) / repeats
    return {"batch": batch, "vocab": trie.vocab_size, "mask_states_per_s": batch / mask_s,
            "mask_ms_per_batch": mask_s * 1e3, "advance_states_per_s": batch / advance_s,
            "torch_threads": torch.get_num_threads()}


def stage_open(trie_dir: str, mmap: bool, hold_s: float) -> dict:
    """Open the trie, touch every page, report what this process added; then linger."""
    from angel_dist.trie import Trie

    rss0, private0 = _rss_mb(), _private_mb()
    trie = Trie.load(trie_dir, mmap=mmap)
    checksum = sum(int(t.long().sum()) for t in trie._t.values())
    report = {"mmap": mmap, "rss_added_mb": _rss_mb() - rss0, "private_added_mb": _private_mb() - private0,
              "checksum": checksum}
    print(json.dumps(report), flush=True)
    time.sleep(hold_s)
    return report


def run_stage(name: str, *args) -> dict:
    cmd = [sys.executable, __file__, "--stage", name, *map(str, args)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def second_process(trie_dir: Path, mmap: bool) -> dict:
    """A first process holds the trie open while a second one opens it too."""
    cmd = [sys.executable, __file__, "--stage", "open", str(trie_dir), str(mmap), "30"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        json.loads(first.stdout.readline())
        second = run_stage("open", trie_dir, mmap, 0)
    finally:
        first.kill()
        first.wait()
    return second


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concepts", type=int, default=250_000)
    p.add_argument("--vocab-size", type=int, default=32_000)
    p.add_argument("--dict-sample", type=int, default=200_000, help="names in the dict-of-dicts comparison")
    p.add_argument("--work-dir", default=None, help="keep the synthetic release and outputs here")
    p.add_argument("--stage", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        name, rest = args.stage[0], args.stage[1:]
        if name == "open":
            stage_open(rest[0], rest[1] == "True", float(rest[2]))
            return
        fn = {"kb": stage_kb, "tokenizer": stage_tokenizer, "trie": stage_trie, "dict": stage_dict_trie,
              "mask": stage_mask}[name]
        casts = {"tokenizer": (str, str, int), "dict": (str, int), "mask": (str, int, int)}.get(name, (str,) * 3)
        print(json.dumps(fn(*[c(v) for c, v in zip(casts, rest)])))
        return

    sys.path.insert(0, str(HERE))
    from synth_umls import write_synthetic_umls

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="angel-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report = {"cpus": os.cpu_count()}
    meta_dir = work / "META"
    if not (meta_dir / "MRCONSO.RRF").exists():
        t0 = time.perf_counter()
        report["synth"] = write_synthetic_umls(meta_dir, args.concepts, seed=0)
        report["synth"]["seconds"] = time.perf_counter() - t0
    kb = run_stage("kb", meta_dir, work / "kb.parquet")
    kb["rows_per_s"] = kb["mrconso_rows"] / kb["seconds"]
    report["kb_build"] = kb
    print(json.dumps({"kb_build": kb}), file=sys.stderr)
    report["tokenizer_train"] = run_stage("tokenizer", work / "kb.parquet", work / "tok", args.vocab_size)
    trie = run_stage("trie", work / "kb.parquet", work / "tok", work / "trie")
    report["trie_build"] = {k: trie[k] for k in ("seconds", "peak_rss_mb", "n_names", "n_nodes", "n_edges",
                                                  "bytes", "max_degree", "max_depth")}
    report["trie_build"]["bytes_per_node"] = trie["bytes"] / trie["n_nodes"]
    print(json.dumps({"trie_build": report["trie_build"]}), file=sys.stderr)
    report["dict_of_dicts"] = run_stage("dict", work / "trie", args.dict_sample)
    report["mask"] = run_stage("mask", work / "trie", 1024, 20)
    trie_mb = trie["bytes"] / 2**20
    shared, copied = second_process(work / "trie", True), second_process(work / "trie", False)
    report["second_process"] = {
        "trie_mb": trie_mb, "mmap": shared, "copy": copied,
        "mmap_private_added_over_trie": shared["private_added_mb"] / trie_mb,
        "copy_private_added_over_trie": copied["private_added_mb"] / trie_mb,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
