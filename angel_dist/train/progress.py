"""Live training progress where the user looks: rank 0 writes RUN/progress.json every few
seconds; the driver prints it as one line at a bounded rate; `angel status` reads it.

Why a file: rank 0 runs in a Ray worker whose output never reaches the driver (Ray starts with
log_to_driver=False, so the workers' own logs stay out of the terminal and of `ray job logs`),
and the run directory is already on storage that the driver and every node see. Ray Train's
reports (`ray.train.report`, which the loop also sends for Ray's dashboard) reach its
controller, not the driver. One line every `every` seconds at most (10 s by default: 100 lines
for a run of 1000 steps that takes 17 minutes, however fast its steps) and at least one each
1.5 * `every` + 1 s while steps complete.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from angel_dist.atomic import atomic_path

PROGRESS_FILE = "progress.json"


class ProgressWriter:
    """Rank 0: step, total, loss and tokens/s since the last write, ETA; at most every `every` / 2 s."""

    def __init__(self, run_dir: str | Path, step: int, total: int, world: int, every: float):
        self.path = Path(run_dir) / PROGRESS_FILE
        self.total, self.world, self.every = total, world, every
        self.start_step, self.start = step, time.time()
        self._reset(time.time())

    def _reset(self, now: float) -> None:
        self.loss, self.micro, self.tokens, self.since = 0.0, 0, 0, now

    def add(self, loss, tokens: int) -> None:
        """One micro-batch: its loss (a tensor is summed where it lives, read at the next write)."""
        self.loss, self.micro, self.tokens = self.loss + loss.detach(), self.micro + 1, self.tokens + tokens

    def step(self, step: int) -> None:
        now = time.time()
        if now - self.since < self.every / 2 and step < self.total:
            return
        rate = (step - self.start_step) / max(now - self.start, 1e-9)
        record = {"step": step, "total": self.total, "world": self.world, "time": now,
                  "loss": float(self.loss) / max(self.micro, 1),
                  # rank 0's tokens times the ranks: ranks read batches of the same sizes on average
                  "tokens_per_s": self.tokens * self.world / max(now - self.since, 1e-9),
                  "eta_s": (self.total - step) / rate if rate > 0 else None}
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(record))
        self._reset(now)


def read_progress(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / PROGRESS_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):  # not written yet, or torn by a crash (JSON or UTF-8)
        return None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def describe(record: dict, now: float | None = None) -> str:
    """`step 120/1000 (12%), loss 3.2104, 5,400 tokens/s, ETA 7m30s` as of now."""
    age = max((now or time.time()) - record["time"], 0.0)
    parts = [f"step {record['step']}/{record['total']} ({100 * record['step'] // max(record['total'], 1)}%)",
             f"loss {record['loss']:.4f}", f"{record['tokens_per_s']:,.0f} tokens/s"]
    if record["step"] < record["total"] and record.get("eta_s") is not None:
        parts.append(f"ETA {_duration(max(record['eta_s'] - age, 0))}")
    if age > 60:
        parts.append(f"last update {_duration(age)} ago")
    return ", ".join(parts)


class ProgressTail:
    """Driver: while training runs, print rank 0's progress as `[angel] LABEL: ...` lines, one at
    most every `every` seconds, and the last one when the block ends."""

    def __init__(self, run_dir: str | Path, label: str, every: float, enabled: bool = True):
        self.run_dir, self.label, self.every, self.enabled = Path(run_dir), label, every, enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="angel-progress")
        self._printed: float | None = None  # the `time` of the record printed last
        self._last_line = 0.0

    def __enter__(self) -> "ProgressTail":
        # A record already there was left by an earlier run: not news. (Records are told apart by
        # their own time stamps, never compared with this machine's clock, which may differ.)
        self._printed = (read_progress(self.run_dir) or {}).get("time")
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            self._print(force=True)

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.every / 2)):
            self._print()

    def _print(self, force: bool = False) -> None:
        record = read_progress(self.run_dir)
        if record is None or record["time"] == self._printed:
            return
        if not force and time.time() - self._last_line < self.every:
            return
        print(f"[angel] {self.label}: {describe(record)}", flush=True)
        self._printed, self._last_line = record["time"], time.time()
