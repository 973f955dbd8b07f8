"""The training stage's typed config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from angel_dist.objectives import DPO_LOSSES

OBJECTIVES = ("nll", "dpo")
SCHEDULES = ("linear", "polynomial", "constant")


@dataclass
class TrainConfig:
    objective: str = "nll"
    data: list[str] = field(default_factory=list)  # shard set directories (examples for nll, pairs for dpo)
    model: str = "tiny"  # a preset, a model directory or a cached HF name
    tokenizer: str = ""
    ds_config: str = "ds_configs/zero2.json"
    out: str = "runs/train"
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    batch_size: int = 8  # per rank and micro-batch
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; default: epochs over the data
    lr: float = 3e-5
    weight_decay: float = 0.01
    schedule: str = "linear"
    warmup_steps: int = 0
    poly_power: float = 1.0
    clip: float = 1.0
    label_smoothing: float = 0.1
    beta: float = 0.1
    dpo_loss: str = "sigmoid"
    seed: int = 0
    shuffle_buffer: int = 4096
    bucket: bool = True
    loader_workers: int = 1
    save_every: int = 100
    keep_last: int = 3
    log_every: int = 10
    max_failures: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.dpo_loss not in DPO_LOSSES:
            raise ValueError(f"dpo_loss must be one of {DPO_LOSSES}, got {self.dpo_loss!r}")
        if not self.data:
            raise ValueError("data: give at least one shard set directory")
        if self.workers < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("workers, batch_size and grad_accum must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown train config key(s): {', '.join(unknown)}")
        return cls(**d)
