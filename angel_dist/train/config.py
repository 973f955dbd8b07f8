"""The training stage's typed config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Literal

from angel_dist.objectives import DPO_LOSSES
from angel_dist.typed import (ConfigError, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range,
                              check_fields)

OBJECTIVES = ("nll", "dpo")
SCHEDULES = ("linear", "polynomial", "constant")


@dataclass
class TrainConfig:
    objective: Literal[OBJECTIVES] = "nll"
    data: list[str] = field(default_factory=list)  # shard set directories (examples for nll, pairs for dpo)
    model: str = "tiny"  # a preset, a model directory or a cached HF name
    tokenizer: str = ""
    ds_config: str = "ds_configs/zero2.json"
    out: str = "runs/train"
    workers: PositiveInt = 1
    gpus_per_worker: NonNegativeFloat = 0.0
    cpus_per_worker: PositiveFloat = 1.0
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
    loader_workers: NonNegativeInt = 1
    save_every: PositiveInt = 100
    keep_last: NonNegativeInt = 3  # 0: keep every checkpoint
    log_every: PositiveInt = 10
    max_failures: Annotated[int, Range(ge=-1)] = 0  # Ray Train's: -1 retries forever
    progress: bool = True

    def __post_init__(self):
        check_fields(self)
        if not self.data:
            raise ConfigError("data", "give at least one shard set directory")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown train config key(s): {', '.join(unknown)}")
        return cls(**d)
