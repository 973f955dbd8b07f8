"""Training metrics of rank 0: one JSON object per logged step, and TensorBoard scalars."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from angel_dist.atomic import atomic_path
from angel_dist.errors import BadInputError


def _logged(path: Path) -> list[tuple[str, dict]]:
    """(line, record) per logged line. A last line that does not parse is what a crash or power
    loss mid-append leaves (part of a line, or zeros): dropped with a warning; its step is redone."""
    lines = [(n, raw) for n, raw in enumerate(path.read_bytes().split(b"\n"), 1) if raw.strip()] if path.exists() else []
    out = []
    for n, raw in lines:
        try:
            record = json.loads(raw.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError(f"found {type(record).__name__}")
            out.append((raw.decode("utf-8"), record))
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            if n < lines[-1][0]:
                raise BadInputError(path, n, f"expected one JSON object per line: {e}") from None
            warnings.warn(f"{path}:{n}: dropped the last line, torn by an interrupted write: {raw[:80]!r}")
    return out


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The logged records of a training run, oldest first ([] before the first log)."""
    return [record for _, record in _logged(Path(run_dir) / "metrics.jsonl")]


class MetricsLog:
    def __init__(self, run_dir: str | Path, resumed_step: int = 0, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        if self.path.exists():
            # Steps after the checkpoint we resume from are about to be redone.
            kept = [line for line, record in _logged(self.path) if record.get("step", 0) <= resumed_step]
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
            f.flush()
            os.fsync(f.fileno())  # lines up to a durable checkpoint must survive a power loss with it
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"train/{k}", float(v), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
