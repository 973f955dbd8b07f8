"""The Ray edge of training: a TorchTrainer whose workers are the DeepSpeed ranks."""

from __future__ import annotations

import json
import os
from pathlib import Path

from angel_dist.atomic import write_json
from angel_dist.ray_env import init_ray
from angel_dist.train.config import TrainConfig


def run_training(cfg: TrainConfig) -> Path:
    """Train (or resume) the run in `cfg.out` on the Ray cluster of RAY_ADDRESS, or a local one."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from angel_dist.train.loop import FAULT_ENV, train_worker
    from angel_dist.train.rendezvous import BoundRendezvousConfig

    run = Path(cfg.out).resolve()
    cfg.out = str(run)
    cfg.data = [str(Path(d).resolve()) for d in cfg.data]
    if Path(cfg.ds_config).exists():
        cfg.ds_config = str(Path(cfg.ds_config).resolve())
    if Path(cfg.tokenizer).exists():
        cfg.tokenizer = str(Path(cfg.tokenizer).resolve())
    run.mkdir(parents=True, exist_ok=True)
    write_json(run / "train_config.json", cfg.to_dict())
    init_ray()
    gpu = cfg.gpus_per_worker > 0
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if gpu else {})}
    trainer = TorchTrainer(
        # The fault switch is read here, where the user set it, not in workers a running Ray started.
        train_worker, train_loop_config={"config": json.loads(json.dumps(cfg.to_dict())),
                                         "fault": os.environ.get(FAULT_ENV)},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=gpu, resources_per_worker=resources),
        torch_config=BoundRendezvousConfig(backend="nccl" if gpu else "gloo"),
        run_config=RunConfig(name="ray", storage_path=str(run), failure_config=FailureConfig(max_failures=cfg.max_failures)))
    try:
        trainer.fit()
    except Exception as e:
        _raise_bad_input(e)
        raise
    return run


def _raise_bad_input(error: Exception) -> None:
    """A rank's BadInputError (a checkpoint file refused) as itself, not inside Ray Train's error."""
    from angel_dist.errors import BadInputError

    for failure in getattr(error, "worker_failures", {}).values():
        if isinstance(failure, BadInputError):
            raise failure from error
