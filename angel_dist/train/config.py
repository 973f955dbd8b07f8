"""The training stage's typed config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Literal

from angel_dist.objectives import DPO_LOSSES
from angel_dist.typed import (ConfigError, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range,
                              check_fields)

OBJECTIVES = ("nll", "dpo")
SCHEDULES = ("linear", "polynomial", "constant")
PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # Ray placement group strategies
LOGGERS = ("tensorboard", "mlflow", "wandb")  # beside metrics.jsonl, which is always written
MAX_PAD_BUCKETS = 8  # each length is a shape a compiled step is captured for, in sources and decoder rows each


@dataclass
class TrainConfig:
    objective: Literal[OBJECTIVES] = "nll"
    data: list[str] = field(default_factory=list)  # shard set directories (examples for nll, pairs for dpo)
    model: str = "tiny"  # a preset, a model directory or a cached HF name
    tokenizer: str = ""
    ds_config: str = "ds_configs/zero2.json"
    out: str = "runs/train"
    # Ranks: a number, or [MIN, MAX]: each (re)start takes as many as the live nodes hold, at least MIN.
    workers: PositiveInt | list[PositiveInt] = 1
    gpus_per_worker: NonNegativeFloat = 0.0  # a fraction only with one rank (workers: 1 or [1, 1])
    cpus_per_worker: PositiveFloat = 1.0
    worker_resources: dict[str, PositiveFloat] = field(default_factory=dict)  # custom Ray resources of each rank
    placement: Literal[PLACEMENTS] = "PACK"  # how the ranks spread over nodes (Ray placement group strategy)
    capacity_timeout: PositiveFloat = 600.0  # seconds to wait for nodes that hold MIN workers before giving up
    batch_size: PositiveInt = 8  # per rank and micro-batch
    grad_accum: PositiveInt = 1
    epochs: PositiveFloat = 1.0
    max_steps: PositiveInt | None = None  # optimizer steps; default: epochs over the data
    lr: PositiveFloat = 3e-5
    weight_decay: NonNegativeFloat = 0.01
    schedule: Literal[SCHEDULES] = "linear"
    warmup_steps: NonNegativeInt = 0
    poly_power: PositiveFloat = 1.0
    clip: NonNegativeFloat = 1.0  # 0: no clipping (DeepSpeed's gradient_clipping)
    label_smoothing: Annotated[float, Range(ge=0, lt=1)] = 0.1
    beta: PositiveFloat = 0.1
    dpo_loss: Literal[DPO_LOSSES] = "sigmoid"
    seed: NonNegativeInt = 0
    shuffle_buffer: PositiveInt = 4096
    bucket: bool = True
    # Pad sources and decoder rows up to the next of these increasing lengths (at most 8; past the
    # last, to a multiple of it) instead of the batch maximum: a few fixed shapes, for `compile`
    # and CUDA graphs. Empty: no padding beyond the batch.
    pad_to_buckets: list[PositiveInt] = field(default_factory=list)
    compile: bool = False  # torch.compile the model (for GPUs; static shapes with pad_to_buckets)
    loader_workers: NonNegativeInt = 1
    save_every: PositiveInt = 100
    keep_last: NonNegativeInt = 3  # 0: keep every checkpoint
    log_every: PositiveInt = 10
    max_failures: Annotated[int, Range(ge=-1)] = 0  # restarts after a failed rank or a lost node; -1: no limit
    progress: bool = True  # a progress line (step, loss, tokens/s, ETA) in the driver every progress_every s
    progress_every: PositiveFloat = 10.0
    loggers: list[Literal[LOGGERS]] = field(default_factory=lambda: ["tensorboard"])
    tracking_uri: str = ""  # MLflow's; empty: a file store in RUN/mlruns
    experiment: str = ""  # MLflow experiment and W&B project; empty: angel-dist

    def __post_init__(self):
        check_fields(self)
        if not self.data:
            raise ConfigError("data", "give at least one shard set directory")
        pad = self.pad_to_buckets
        if len(pad) > MAX_PAD_BUCKETS or any(a >= b for a, b in zip(pad, pad[1:])):
            raise ConfigError("pad_to_buckets", f"expected at most {MAX_PAD_BUCKETS} increasing lengths, got {pad}")
        if isinstance(self.workers, list) and (len(self.workers) != 2 or self.workers[0] > self.workers[1]):
            raise ConfigError("workers", f"expected a number or [MIN, MAX] with MIN <= MAX, got {self.workers}")
        gpus = self.gpus_per_worker
        # Ray packs fractional GPUs onto one device, and NCCL refuses two ranks on one GPU or hangs. One
        # rank shares its GPU with nothing of this run's; under [MIN, MAX] a start may take MAX ranks.
        if 0 < gpus < 1 and self.max_workers > 1:
            raise ConfigError("gpus_per_worker", f"{gpus:g} with workers {self.workers} lets Ray put two ranks on one "
                                                 f"GPU, where NCCL refuses or hangs; give each rank a whole GPU (1), "
                                                 f"or run one rank (workers: 1)")
        if gpus > 1 and gpus != int(gpus):
            raise ConfigError("gpus_per_worker", f"above 1, expected a whole number of GPUs, got {gpus:g}")

    @property
    def min_workers(self) -> int:
        return self.workers if isinstance(self.workers, int) else self.workers[0]

    @property
    def max_workers(self) -> int:
        return self.workers if isinstance(self.workers, int) else self.workers[1]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown train config key(s): {', '.join(unknown)}")
        return cls(**d)
