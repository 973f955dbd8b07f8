"""Training metrics of rank 0: one JSON object per logged step, and TensorBoard scalars."""

from __future__ import annotations

import json
from pathlib import Path

from angel_dist.atomic import atomic_path


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The logged records of a training run, oldest first ([] before the first log)."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class MetricsLog:
    def __init__(self, run_dir: str | Path, resumed_step: int = 0, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        if self.path.exists():
            # Steps after the checkpoint we resume from are about to be redone.
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resumed_step]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept))
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resumed_step + 1)

    def log(self, step: int, values: dict) -> None:
        record = {"step": step, **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"train/{k}", float(v), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
