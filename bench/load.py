"""Benchmark: what loading a checkpoint costs a process, by loading path.

    python bench/load.py                     # a `large` (bart-large shapes) checkpoint, 2 CPU ranks
    python bench/load.py --model base

The preset (with an 8,000-token HPO tokenizer) is saved twice as a model directory, its weights in
fp32 (as bart-large ships) and in bf16 (as Llama 3 ships); then each path runs in fresh processes:

- `load`: one process loads a checkpoint (`load_model`) in fp32 or bf16: what a search actor does
  (fp32 on CPU, bf16 on a GPU with bf16) and a training rank under stage 0, ZeRO-1 or ZeRO-2;
- `zero3`: 2 ranks (gloo) load the fp32 checkpoint under ZeRO-3 with deepspeed.zero.Init, each
  materializing its partition as it is read, then start the engine; `zero3-full`: the same ranks
  loading the whole model first, partitioned when the engine starts (what every rank did before).

Reported per process, in MiB: the anonymous memory the load added (RssAnon of /proc/self/status:
copies of the weights this process alone holds), the file-backed RSS (pages of the memory-mapped
safetensors: the node's page cache, one copy shared by every process that maps the file), and
the peak RSS (`ru_maxrss`, anonymous and file-backed). The parameters' fp32 bytes are given for
scale.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]


def _status_mb() -> dict:
    """RssAnon and RssFile of this process, MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("RssAnon", "RssFile")}


def _measured(before: dict) -> dict:
    after = _status_mb()
    return {"anon_added_mb": after["RssAnon"] - before["RssAnon"], "file_mb": after["RssFile"],
            "peak_rss_mb": _peak_mb()}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_prepare(work: str, model: str) -> dict:
    import torch

    from angel_dist.kb.build import KbBuildConfig, build_kb
    from angel_dist.model import load_model, save_model
    from angel_dist.tokenizer import load_tokenizer, train_tokenizer

    w = Path(work)
    build_kb(KbBuildConfig(format="obo", source="hpo", out=str(w / "hpo.parquet")), progress=False)
    train_tokenizer(w / "hpo.parquet", 8000, w / "tok", progress=False)
    tok = load_tokenizer(w / "tok")
    m = load_model(model, tok, seed=0)
    save_model(m, tok, w / "float32")
    save_model(m.to(torch.bfloat16), tok, w / "bfloat16")
    return {"parameters": sum(p.numel() for p in m.parameters())}


def stage_load(work: str, saved: str, dtype: str) -> dict:
    import torch

    from angel_dist.model import load_model
    from angel_dist.tokenizer import load_tokenizer

    tok = load_tokenizer(Path(work) / saved)
    before = _status_mb()
    model = load_model(str(Path(work) / saved), tok, dtype=getattr(torch, dtype))
    measured = _measured(before)
    del model
    return measured


def stage_rank(work: str, rank: str, world: str, port: str, zero_init: str) -> dict:
    os.environ.update({"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": world, "LOCAL_WORLD_SIZE": world,
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "DS_ACCELERATOR": "cpu"})
    import deepspeed
    import torch

    from angel_dist.model import load_model
    from angel_dist.tokenizer import load_tokenizer
    from angel_dist.train.strategy import ds_config, model_loading

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    config = ds_config(ROOT / "ds_configs" / "zero3.json", 2, 1, 1.0, 1e-5, 0.01, on_gpu=False)
    tok = load_tokenizer(Path(work) / "float32")
    before = _status_mb()
    loading = model_loading(config) if zero_init == "1" else {"dtype": torch.float32}
    model = load_model(str(Path(work) / "float32"), tok, **loading)
    loaded = _measured(before)
    deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    return {"loaded": loaded, "engine": _measured(before)}


def _stage(*args: str) -> dict:
    done = subprocess.run([sys.executable, str(HERE), "--stage", *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"stage {args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ranks(work: str, zero_init: bool) -> list[dict]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [subprocess.Popen([sys.executable, str(HERE), "--stage", "rank", work, str(r), "2", port,
                               "1" if zero_init else "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode:
            raise RuntimeError(f"a rank failed:\n{stderr[-3000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="large", help="a seq2seq or causal preset")
    p.add_argument("--work-dir", default=None)
    p.add_argument("--stage", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        name, *rest = args.stage
        print(json.dumps({"prepare": stage_prepare, "load": stage_load, "rank": stage_rank}[name](*rest)))
        return
    work = args.work_dir or tempfile.mkdtemp(prefix="bench-load-")
    report = {"model": args.model, **_stage("prepare", work, args.model)}
    report["fp32_parameter_mb"] = report["parameters"] * 4 / 2**20
    report["load"] = {f"{saved} file as {dtype}": _stage("load", work, saved, dtype)
                      for saved in ("float32", "bfloat16") for dtype in ("float32", "bfloat16")}
    report["zero3"] = _ranks(work, zero_init=True)
    report["zero3-full"] = _ranks(work, zero_init=False)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
