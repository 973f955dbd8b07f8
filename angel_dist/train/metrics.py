"""Training metrics of rank 0: one JSON object per logged step in metrics.jsonl (what the pipeline
and the reports read), and the experiment trackers a run chooses (`loggers`), all behind one small
interface: `log(step, values)` and `close()`.

  tensorboard  RUN/tensorboard event files
  mlflow       a run in an MLflow experiment: the tracking URI given, else a file store in RUN/mlruns
  wandb        a Weights & Biases run in RUN/wandb (WANDB_MODE=offline needs no network)

Each tracker's library is imported only when it is chosen. A resumed run continues the same
tracker run (its id is kept in RUN/trackers.json); steps after the checkpoint it resumes from
are logged again.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Protocol

from angel_dist.atomic import atomic_path, write_json
from angel_dist.errors import BadInputError, read_json

DEFAULT_EXPERIMENT = "angel-dist"


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


class Tracker(Protocol):
    def log(self, step: int, values: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    def __init__(self, run_dir: Path, resumed_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resumed_step + 1)

    def log(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        self.writer.close()


class MLflow:
    def __init__(self, run_dir: Path, experiment: str, tracking_uri: str, run_id: str | None):
        if not tracking_uri:
            # MLflow 3 keeps its file store only on request; a run directory needs no database server.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            tracking_uri = (run_dir / "mlruns").resolve().as_uri()
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        if run_id is None:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        self.run_id = run_id

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandB:
    def __init__(self, run_dir: Path, experiment: str, run_id: str | None):
        import wandb

        self.run = wandb.init(project=experiment, name=run_dir.name, dir=str(run_dir), id=run_id, resume="allow")
        self.run_id = self.run.id

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MetricsLog:
    def __init__(self, run_dir: str | Path, resumed_step: int = 0, loggers: list[str] = ("tensorboard",),
                 experiment: str = "", tracking_uri: str = ""):
        run_dir = Path(run_dir)
        self.path = run_dir / "metrics.jsonl"
        if self.path.exists():
            # Steps after the checkpoint we resume from are about to be redone.
            kept = [line for line, record in _logged(self.path) if record.get("step", 0) <= resumed_step]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept))
        ids_path = run_dir / "trackers.json"
        ids = read_json(ids_path, "the tracker run ids") if ids_path.exists() else {}
        experiment = experiment or DEFAULT_EXPERIMENT
        makers = {"tensorboard": lambda: TensorBoard(run_dir, resumed_step),
                  "mlflow": lambda: MLflow(run_dir, experiment, tracking_uri, ids.get("mlflow")),
                  "wandb": lambda: WandB(run_dir, experiment, ids.get("wandb"))}
        unknown = sorted(set(loggers) - set(makers))
        if unknown:
            raise ValueError(f"unknown logger(s) {', '.join(unknown)} (known: {', '.join(makers)})")
        self.trackers: list[Tracker] = [makers[name]() for name in loggers]
        new_ids = {**ids, **{name: t.run_id for name, t in zip(loggers, self.trackers) if hasattr(t, "run_id")}}
        if new_ids != ids:
            write_json(ids_path, new_ids)

    def log(self, step: int, values: dict) -> None:
        values = {k: float(v) for k, v in values.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
            f.flush()
            os.fsync(f.fileno())  # lines up to a durable checkpoint must survive a power loss with it
        for tracker in self.trackers:
            tracker.log(step, values)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
