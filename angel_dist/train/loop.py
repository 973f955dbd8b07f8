"""What every rank runs: data, model, objective, steps, metrics, checkpoints, resume.

Resume is automatic: a rank that finds `checkpoints/latest` loads it (DeepSpeed's sharded
state, the reader position, the step, its RNG state) and goes on; when the world size
differs from the one that saved, rank 0 first converts the checkpoint to DeepSpeed's
universal format, which any world size loads. The reader position is a count of samples
consumed, valid for any world size (see angel_dist/shards/reader.py).
"""

from __future__ import annotations

import os
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


def _resume_plan(root: Path, world: int, rank: int, cfg: TrainConfig) -> tuple[str | None, str | None]:
    """(tag, tag to load): the latest checkpoint, converted to universal on a world-size change."""
    import torch.distributed as dist

    tag = ckpt.latest_tag(root)
    if tag is None:
        return None, None
    meta = ckpt.read_meta(root, tag)
    changed = {k: (meta["config"].get(k), getattr(cfg, k)) for k in _FIXED if meta["config"].get(k) != getattr(cfg, k)}
    if changed:
        raise ValueError(f"{root / tag} was saved by a run with other settings (saved, now): {changed}; "
                         f"use another --out to start a new run")
    if meta["world_size"] == world:
        return tag, tag
    if rank == 0:
        from angel_dist.train.strategy import to_universal

        print(f"[angel] resuming {tag} of world size {meta['world_size']} on {world} ranks: "
              f"converting it to a universal checkpoint", flush=True)
        to_universal(root, tag)
    dist.barrier()
    return tag, f"{tag}.universal"


def train_worker(loop_config: dict) -> None:
    cfg = TrainConfig.from_dict(loop_config["config"])
    on_gpu = cfg.gpus_per_worker > 0 and torch.cuda.is_available()
    if not on_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"  # before DeepSpeed picks its accelerator
    else:
        # Batch shapes change from step to step (length buckets); cuDNN's attention builds an
        # execution plan for each new shape, the other SDPA kernels need none.
        torch.backends.cuda.enable_cudnn_sdp(False)
    import torch.distributed as dist
    from tqdm import tqdm

    from angel_dist.train.metrics import MetricsLog
    from angel_dist.train.strategy import DeepSpeedStrategy, ds_config, init_distributed

    # As many compute threads as CPUs this rank was given: Ray does not cap torch's pool, which
    # otherwise spans the whole machine, so ranks sharing a node would oversubscribe its cores.
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    init_distributed(on_gpu)
    rank, world = dist.get_rank(), dist.get_world_size()
    run, root = Path(cfg.out), Path(cfg.out) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)

    tokenizer = load_tokenizer(cfg.tokenizer)
    model = load_model(cfg.model, tokenizer, seed=cfg.seed)
    loader = ShardLoader(cfg.data, ReaderConfig(batch_size=cfg.batch_size, seed=cfg.seed,
                                                shuffle_buffer=cfg.shuffle_buffer, bucket=cfg.bucket),
                         rank=rank, world_size=world, num_workers=cfg.loader_workers,
                         tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
                         **family_of(model).batch_ids(model, tokenizer))
    want = "pairs" if cfg.objective == "dpo" else "examples"
    if loader.kind != want:
        raise ValueError(f"objective {cfg.objective} trains on {want} shard sets; {cfg.data} holds {loader.kind}")
    steps_per_epoch = max(len(loader) // cfg.grad_accum, 1)
    total = cfg.max_steps or max(1, round(cfg.epochs * steps_per_epoch))

    tag, load = _resume_plan(root, world, rank, cfg)
    strategy = DeepSpeedStrategy(model, ds_config(cfg.ds_config, cfg.batch_size, cfg.grad_accum, cfg.clip, cfg.lr,
                                                  cfg.weight_decay, on_gpu, universal=load != tag))
    step = 0
    torch.manual_seed(cfg.seed * 1000 + rank)
    if tag is not None:
        client = strategy.load(root, load)
        step = client["step"]
        loader.load_state_dict(client["reader"])
        if load == tag:
            ckpt.load_rng(root / tag, rank)
    step_fn = dpo_step if cfg.objective == "dpo" else nll_step

    def save(at: int) -> None:
        tmp = f"{ckpt.tag_of(at)}.tmp"
        dist.barrier()
        strategy.save(root, tmp, {"step": at, "reader": loader.state_dict()})
        ckpt.save_rng(root / tmp, rank)
        dist.barrier()
        if rank == 0:
            ckpt.write_meta(root / tmp, {"step": at, "world_size": world, "config": cfg.to_dict(),
                                         "reader": loader.state_dict()})
            ckpt.publish(root, tmp, ckpt.tag_of(at), cfg.keep_last)
        dist.barrier()

    log = MetricsLog(run, step) if rank == 0 else None
    bar = tqdm(total=total, initial=step, desc=f"train {cfg.objective}", disable=rank != 0 or not cfg.progress)
    # Dropout off during DPO, so policy and stored reference log-probs agree at the first step.
    # Eval mode, not TRL's disable_dropout_in_model: BART and Llama apply dropout functionally from
    # config floats, which that helper (it zeroes nn.Dropout modules) does not reach.
    strategy.train(cfg.objective != "dpo")
    sums: dict = {}
    micro, tokens, samples, t0 = 0, 0, 0, time.perf_counter()
    while step < total:
        for batch in loader:
            n_tokens = batch_tokens(batch)
            loss, metrics = step_fn(strategy.model, _to(batch, strategy.device), cfg)
            strategy.backward(loss)
            boundary = strategy.step(lr_at(step, cfg.lr, cfg.schedule, cfg.warmup_steps, total, cfg.poly_power))
            micro, tokens, samples = micro + 1, tokens + n_tokens, samples + len(batch["keys"])
            for k, v in metrics.items():  # summed where they live, read at the next log line
                sums[k] = sums.get(k, 0.0) + (v.detach() if isinstance(v, torch.Tensor) else v)
            if not boundary:
                continue
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == total:
                # On the engine's device: NCCL reduces only GPU tensors (gloo either).
                values = torch.tensor([float(sums[k]) / micro for k in sorted(sums)] + [tokens, samples],
                                      dtype=torch.float64, device=strategy.device)
                dist.all_reduce(values)
                elapsed = time.perf_counter() - t0
                names = sorted(sums)
                record = {k: values[i].item() / world for i, k in enumerate(names)}
                record.update({"lr": lr_at(step - 1, cfg.lr, cfg.schedule, cfg.warmup_steps, total, cfg.poly_power),
                               "tokens_per_s": values[-2].item() / elapsed, "samples_per_s": values[-1].item() / elapsed,
                               "epoch": loader.epoch + loader.consumed / max(loader.stream.total, 1)})
                if log is not None:
                    log.log(step, record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                sums, micro, tokens, samples, t0 = {}, 0, 0, 0, time.perf_counter()
            _fault(loop_config.get("fault"), run, rank, step)
            if step % cfg.save_every == 0 or step == total:
                save(step)
            if step >= total:
                break
    bar.close()
    if log is not None:
        log.close()
