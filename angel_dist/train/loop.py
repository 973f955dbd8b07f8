"""What every rank runs: data, model, objective, steps, metrics, checkpoints, resume.

Resume is automatic: a rank that finds `checkpoints/latest` loads it (DeepSpeed's sharded
state, the reader position, the step, its RNG state) and goes on; when the world size
differs from the one that saved, rank 0 first converts a DeepSpeed ZeRO checkpoint to DeepSpeed's
universal format, which any world size loads. The reader position is a count of samples
consumed, valid for any world size (see angel_dist/shards/reader.py).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from angel_dist.faults import crash_once
from angel_dist.model import family_of, load_model, score, score_pairs
from angel_dist.objectives import dpo_loss, label_smoothed_nll
from angel_dist.shards.reader import ReaderConfig, ShardLoader
from angel_dist.tokenizer import load_tokenizer, tokenizer_fingerprint
from angel_dist.train import checkpoint as ckpt
from angel_dist.train.config import TrainConfig
from angel_dist.train.schedule import lr_at

FAULT_ENV = "ANGEL_FAULT_INJECT"  # "RANK:STEP": that rank dies right after that optimizer step, once per run
KEYS_ENV = "ANGEL_TRAIN_KEYS_LOG"  # a file: every rank appends the keys of each batch it reads (tests)
PLACEMENT_FILE = "placement.json"
# Ray Train's controller takes one report per rank each time it polls its workers (every 2 s) and a
# report made before the last one was taken blocks its rank until then: at one report per log line
# the demo's pretraining spent half its time waiting. So at most one every this many seconds.
RAY_REPORT_EVERY_S = 10.0
# What a resumed run must share with the checkpoint it resumes from.
_FIXED = ("objective", "data", "model", "tokenizer", "seed", "shuffle_buffer", "bucket", "dpo_loss", "beta")


def nll_step(model, batch: dict, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    scores = score(model, batch["source_mask"], batch["decoder_ids"], batch["decoder_mask"], batch["target_mask"],
                   source_ids=batch["source_ids"])
    return label_smoothed_nll(scores, cfg.label_smoothing)


def dpo_step(model, batch: dict, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    chosen, rejected = score_pairs(model, batch)
    return dpo_loss(chosen.logp, rejected.logp, batch["ref_chosen_logp"], batch["ref_rejected_logp"], beta=cfg.beta,
                    loss_type=cfg.dpo_loss, chosen_tokens=chosen.tokens, rejected_tokens=rejected.tokens)


def batch_tokens(batch: dict) -> int:
    """Tokens the model reads in a batch (padding excluded): the source once, every decoder row.
    Counted on the host copy: on a GPU, reading a count back would wait for the step."""
    return int(sum(v.sum() for k, v in batch.items() if k == "source_mask" or k.endswith("decoder_mask")))


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _fault(spec: str | None, run: Path, rank: int, step: int) -> None:
    if not spec:
        return
    r, s = (int(x) for x in spec.split(":"))
    if (r, s) == (rank, step):
        crash_once(run / f".fault-injected-{r}-{s}", f"{FAULT_ENV}: rank {rank} crashes after step {step}", 13)


def _resume_plan(root: Path, world: int, rank: int, cfg: TrainConfig) -> tuple[str | None, str | None, dict]:
    """(tag, tag to load, its meta.json): the latest checkpoint, its files checked against their
    recorded checksums (every rank hashes a share, rank 0 judges), converted to universal on a
    world-size change. ZeRO stage 0 (ddp.json) saves the whole model and optimizer state, which
    any world size loads as it is (DeepSpeed's converter reads only ZeRO's partitioned optimizer
    states); so do the slices of the strategy's ZeRO-1 (angel_dist/train/partitioned_adamw.py)."""
    import torch.distributed as dist

    tag = ckpt.latest_tag(root)
    if tag is None:
        return None, None, {}
    meta = ckpt.verified_meta(root, tag, rank, world)
    dist.barrier()
    changed = {k: (meta["config"].get(k), getattr(cfg, k)) for k in _FIXED if meta["config"].get(k) != getattr(cfg, k)}
    if changed:
        raise ValueError(f"{root / tag} was saved by a run with other settings (saved, now): {changed}; "
                         f"use another --out to start a new run")
    if meta["world_size"] == world or not any((root / tag).glob("*_optim_states.pt")):
        return tag, tag, meta
    if rank == 0:
        from angel_dist.train.strategy import to_universal

        print(f"[angel] resuming {tag} of world size {meta['world_size']} on {world} ranks: "
              f"converting it to a universal checkpoint", flush=True)
        to_universal(root, tag)
    dist.barrier()
    return tag, f"{tag}.universal", meta


def planned_steps(cfg: TrainConfig, loader: ShardLoader, step: int) -> int:
    """The optimizer step the run ends at. `max_steps` counts steps; `epochs` is a place in the
    data: `epochs` times the steps of an epoch at this world size, less the steps' worth of data
    already read, so a run resumed on another world size (other samples per step) ends where the
    uninterrupted run's data ends, neither repeating nor leaving out samples before it."""
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = max(len(loader) // cfg.grad_accum, 1)
    done = loader.epoch * per_epoch + loader.consumed // (loader.stream.step_samples * cfg.grad_accum)
    return max(step + round(cfg.epochs * per_epoch) - done, step, 1)


def _placement(rank: int, world: int) -> tuple[list[dict], bool]:
    """Every rank's node, and whether they all share this one. By Ray's node id: Ray Train's
    LOCAL_WORLD_SIZE counts the ranks of an IP address, so two Ray nodes of one machine (or behind
    one address) would pass for one."""
    import torch.distributed as dist

    from angel_dist.placement import here

    ranks: list = [None] * world
    dist.all_gather_object(ranks, {"rank": rank, **here()})
    return ranks, len({r["node_id"] for r in ranks}) == 1


def _record_placement(run: Path, step: int, ranks: list[dict], shared_memory: bool) -> None:
    """Rank 0: one entry per (re)start of the run in RUN/placement.json, with whether the
    node-local (shared-memory) all-reduce came up."""
    from angel_dist.atomic import write_json
    from angel_dist.errors import read_json

    path = run / PLACEMENT_FILE
    starts = read_json(path, "the ranks' placement") if path.exists() else []
    write_json(path, starts + [{"from_step": step, "world": len(ranks), "ranks": ranks,
                                "node_local_all_reduce": shared_memory}])


def train_worker(loop_config: dict) -> None:
    from angel_dist.ray_env import assigned_device

    cfg = TrainConfig.from_dict(loop_config["config"])
    on_gpu = assigned_device(cfg.gpus_per_worker) == "cuda"
    # Before DeepSpeed picks its accelerator, and whatever the job's environment says.
    os.environ["DS_ACCELERATOR"] = "cuda" if on_gpu else "cpu"
    if on_gpu:
        # Batch shapes change from step to step (length buckets); cuDNN's attention builds an
        # execution plan for each new shape, the other SDPA kernels need none.
        torch.backends.cuda.enable_cudnn_sdp(False)
    import torch.distributed as dist

    from angel_dist.train.metrics import MetricsLog
    from angel_dist.train.progress import ProgressWriter
    from angel_dist.train.strategy import (DeepSpeedStrategy, ds_config, init_distributed, loading_universal,
                                           model_loading)

    # As many compute threads as CPUs this rank was given: Ray does not cap torch's pool, which
    # otherwise spans the whole machine, so ranks sharing a node would oversubscribe its cores.
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    if not dist.is_initialized():  # outside Ray Train (bench/train.py runs one rank in-process)
        dist.init_process_group("nccl" if on_gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ranks, node_local = _placement(rank, world)
    shared_memory = init_distributed(on_gpu, node_local)
    run, root = Path(cfg.out), Path(cfg.out) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)

    tokenizer = load_tokenizer(cfg.tokenizer)
    engine = ds_config(cfg.ds_config, cfg.batch_size, cfg.grad_accum, cfg.clip, cfg.lr, cfg.weight_decay, on_gpu)
    model = load_model(cfg.model, tokenizer, seed=cfg.seed, tokenizer_name=cfg.tokenizer, **model_loading(engine))
    loader = ShardLoader(cfg.data, ReaderConfig(batch_size=cfg.batch_size, seed=cfg.seed,
                                                shuffle_buffer=cfg.shuffle_buffer, bucket=cfg.bucket,
                                                pad_to=tuple(cfg.pad_to_buckets)),
                         rank=rank, world_size=world, num_workers=cfg.loader_workers,
                         tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
                         **family_of(model).batch_ids(model, tokenizer))
    want = "pairs" if cfg.objective == "dpo" else "examples"
    if loader.kind != want:
        raise ValueError(f"objective {cfg.objective} trains on {want} shard sets; {cfg.data} holds {loader.kind}")

    tag, load, meta = _resume_plan(root, world, rank, cfg)
    strategy = DeepSpeedStrategy(model, loading_universal(engine) if load != tag else engine)
    if cfg.compile:
        strategy.compile(len(cfg.pad_to_buckets) ** 2)
    step = 0
    torch.manual_seed(cfg.seed * 1000 + rank)
    if tag is not None:
        strategy.load(root, load)
        step = meta["step"]
        loader.load_state_dict(meta["reader"])
        if meta["world_size"] == world:  # a rank of another world size continues no rank's streams
            ckpt.load_rng(root / tag, rank)
    total = planned_steps(cfg, loader, step)
    step_fn = dpo_step if cfg.objective == "dpo" else nll_step

    def save(at: int) -> None:
        tmp = f"{ckpt.tag_of(at)}.tmp"
        if rank == 0:  # what a save a crash cut short left there (maybe of another world size) would go unclaimed
            shutil.rmtree(root / tmp, ignore_errors=True)
        dist.barrier()
        written = strategy.save(root, tmp) + [ckpt.save_rng(root / tmp, rank)]
        files = ckpt.gather_claims(root / tmp, written)  # each rank hashes what it wrote, all at once
        if rank == 0:
            ckpt.publish(root, tmp, ckpt.tag_of(at), {"step": at, "world_size": world, "config": cfg.to_dict(),
                                                      "reader": loader.state_dict()}, files, cfg.keep_last)
        dist.barrier()

    log = progress = None
    if rank == 0:
        _record_placement(run, step, ranks, shared_memory)
        log = MetricsLog(run, step, cfg.loggers, cfg.experiment, cfg.tracking_uri)
        progress = ProgressWriter(run, step, total, world, cfg.progress_every)
    keys_log = loop_config.get("keys_log")
    # Dropout off during DPO, so policy and stored reference log-probs agree at the first step.
    # Eval mode, not TRL's disable_dropout_in_model: BART and Llama apply dropout functionally from
    # config floats, which that helper (it zeroes nn.Dropout modules) does not reach.
    strategy.train(cfg.objective != "dpo")
    sums: dict = {}
    micro, tokens, samples, t0, resumed = 0, 0, 0, time.perf_counter(), step
    reported = t0
    while step < total:
        for batch in loader:
            n_tokens = batch_tokens(batch)
            if keys_log:
                _log_keys(keys_log, run.name, resumed, world, rank, step + 1, batch["keys"])
            loss, metrics = step_fn(strategy.model, _to(batch, strategy.device), cfg)
            strategy.backward(loss)
            boundary = strategy.step(lr_at(step, cfg.lr, cfg.schedule, cfg.warmup_steps, total, cfg.poly_power))
            micro, tokens, samples = micro + 1, tokens + n_tokens, samples + len(batch["keys"])
            for k, v in metrics.items():  # summed where they live, read at the next log line
                sums[k] = sums.get(k, 0.0) + (v.detach() if isinstance(v, torch.Tensor) else v)
            if progress is not None:
                progress.add(loss, n_tokens)
            if not boundary:
                continue
            step += 1
            if step % cfg.log_every == 0 or step == total:
                # On the engine's device: NCCL reduces only GPU tensors (gloo either). Every rank must
                # report to Ray Train at the same step (it is a collective): whether one is due goes
                # into the sum too.
                due = step == total or time.perf_counter() - reported >= RAY_REPORT_EVERY_S
                values = torch.tensor([float(sums[k]) / micro for k in sorted(sums)] + [tokens, samples, due],
                                      dtype=torch.float64, device=strategy.device)
                dist.all_reduce(values)
                elapsed = time.perf_counter() - t0
                names = sorted(sums)
                record = {k: values[i].item() / world for i, k in enumerate(names)}
                record.update({"lr": lr_at(step - 1, cfg.lr, cfg.schedule, cfg.warmup_steps, total, cfg.poly_power),
                               "tokens_per_s": values[-3].item() / elapsed, "samples_per_s": values[-2].item() / elapsed,
                               "epoch": loader.epoch + loader.consumed / max(loader.stream.total, 1)})
                if log is not None:
                    log.log(step, record)
                if values[-1].item() > 0:
                    _report({"step": step, **record})
                    reported = time.perf_counter()
                sums, micro, tokens, samples, t0 = {}, 0, 0, 0, time.perf_counter()
            if progress is not None:
                progress.step(step)
            _fault(loop_config.get("fault"), run, rank, step)
            if step % cfg.save_every == 0 or step == total:
                save(step)
            if step >= total:
                break
    if log is not None:
        log.close()


def _report(metrics: dict) -> None:
    """The logged metrics to Ray Train (its dashboard shows them); every rank reports, as Ray Train
    wants. Outside Ray Train (bench/train.py's in-process rank) there is nobody to tell."""
    import ray.train

    try:
        ray.train.get_context()
    except RuntimeError:
        return
    ray.train.report(metrics)


def _log_keys(path: str, run: str, resumed: int, world: int, rank: int, step: int, keys: list[str]) -> None:
    """Test-only (KEYS_ENV): which samples each rank of which run read for which step, appended to one file."""
    with open(path, "a") as f:
        f.write(json.dumps({"run": run, "from": resumed, "world": world, "rank": rank, "step": step,
                            "keys": keys}) + "\n")
