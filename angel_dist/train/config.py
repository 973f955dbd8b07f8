"""The training stage's typed config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from angel_dist.objectives import DPO_LOSSES

OBJECTIVES = ("nll", "dpo")
SCHEDULES = ("linear", "polynomial", "constant")
PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # Ray placement group strategies
LOGGERS = ("tensorboard", "mlflow", "wandb")  # beside metrics.jsonl, which is always written


@dataclass
class TrainConfig:
    objective: str = "nll"
    data: list[str] = field(default_factory=list)  # shard set directories (examples for nll, pairs for dpo)
    model: str = "tiny"  # a preset, a model directory or a cached HF name
    tokenizer: str = ""
    ds_config: str = "ds_configs/zero2.json"
    out: str = "runs/train"
    # Ranks: a number, or [MIN, MAX]: each (re)start takes as many as the live nodes can host, at least MIN.
    workers: int | list[int] = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    worker_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources each rank takes
    placement: str = "PACK"  # how the ranks' bundles spread over nodes (Ray placement group strategy)
    capacity_timeout: float = 600.0  # seconds to wait for nodes that can host MIN workers before giving up
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
    max_failures: int = 0  # restarts from the last checkpoint after a failed rank or a lost node
    progress: bool = True  # a progress line (step, loss, tokens/s, ETA) in the driver every progress_every s
    progress_every: float = 10.0
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])  # any of LOGGERS
    tracking_uri: str = ""  # MLflow's; empty: a file store in RUN/mlruns
    experiment: str = ""  # MLflow experiment and W&B project; empty: angel-dist

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.dpo_loss not in DPO_LOSSES:
            raise ValueError(f"dpo_loss must be one of {DPO_LOSSES}, got {self.dpo_loss!r}")
        if not self.data:
            raise ValueError("data: give at least one shard set directory")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be >= 1")
        bounds = [self.workers] * 2 if isinstance(self.workers, int) else list(self.workers)
        if len(bounds) != 2 or not 1 <= bounds[0] <= bounds[1]:
            raise ValueError(f"workers must be a number >= 1 or [MIN, MAX] with 1 <= MIN <= MAX, got {self.workers}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        unknown = sorted(set(self.loggers) - set(LOGGERS))
        if unknown:
            raise ValueError(f"loggers: unknown {', '.join(unknown)} (known: {', '.join(LOGGERS)})")

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
