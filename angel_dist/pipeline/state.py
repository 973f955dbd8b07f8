"""run.json: the state of a pipeline run, one record per stage, rewritten atomically.

  {"recipe_fingerprint", "recipe", "stages": {name: {"status": "running" | "done",
   "outputs": {...}, "seconds": s, "order": i, "placement": [...], ["inputs": {...}]}}}

`recipe` is the latest command's (it differs from the first one's only in keys the fingerprint
leaves out: `seeds`). A stage run with `inputs` (the summary of the seeds, the report) runs again
when they differ from those it was done with.

A stage's `placement` says where its work ran (angel_dist/placement.py): for training, every
(re)start of the run's ranks, each rank's Ray node id and IP address, and whether the node-local
all-reduce was on (earlier attempts of a resumed stage included); for searches, each actor with
its node and the shards it did in the attempt that finished the stage.

A stage counts as done only once its record says so, after its outputs are complete on disk;
a rerun skips done stages and runs the others again, each of which is idempotent (shard
writers skip complete shards, training resumes from its latest checkpoint).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from angel_dist.atomic import write_json
from angel_dist.placement import recording

RUN_FILE = "run.json"


class RunState:
    def __init__(self, run_dir: str | Path, recipe: dict, fingerprint: str):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / RUN_FILE
        if self.path.exists():
            state = json.loads(self.path.read_text())
            if state["recipe_fingerprint"] != fingerprint:
                changed = sorted(_diff(state["recipe"], recipe))
                raise ValueError(f"{self.dir} was started with another recipe (changed: {', '.join(changed)}); "
                                 f"use a new --run-dir or the same recipe and overrides")
            self.state = state
            if state["recipe"] != recipe:
                state["recipe"] = recipe
                self._write()
        else:
            self.state = {"recipe_fingerprint": fingerprint, "recipe": recipe, "stages": {}}
            self._write()

    def _write(self) -> None:
        write_json(self.path, self.state)

    def done(self, name: str) -> dict | None:
        record = self.state["stages"].get(name)
        return record["outputs"] if record and record["status"] == "done" else None

    def run(self, name: str, fn: Callable[[], dict], inputs: dict | None = None) -> dict:
        """The outputs of stage `name`: recorded ones if it is done (with these `inputs`, when given),
        else `fn()`'s, then recorded."""
        outputs = self.done(name)
        stages = self.state["stages"]
        if outputs is not None and (inputs is None or stages[name].get("inputs") == inputs):
            return outputs
        stages[name] = {"status": "running", "outputs": {}, "order": stages.get(name, {}).get("order", len(stages)),
                        **({"inputs": inputs} if inputs is not None else {})}
        self._write()
        print(f"[angel] stage {name}", flush=True)
        t = time.perf_counter()
        with recording() as placed:
            outputs = fn()
        stages[name].update(status="done", outputs=outputs, seconds=round(time.perf_counter() - t, 2),
                            placement=placed)
        self._write()
        return outputs

    def table(self) -> list[tuple[str, str, float | None, dict]]:
        rows = sorted(self.state["stages"].items(), key=lambda kv: kv[1]["order"])
        return [(name, r["status"], r.get("seconds"), r["outputs"]) for name, r in rows]


def read_state(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no {RUN_FILE} (not a pipeline run directory)")
    return json.loads(path.read_text())


def _diff(a, b, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = set()
        for key in set(a) | set(b):
            out |= _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}
