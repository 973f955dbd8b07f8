"""Checkpoint directories of a run: atomic, newest named by `latest`, the last k kept.

  RUN/checkpoints/step-00000100/   DeepSpeed's sharded save (every rank's shards), our meta.json
                                   and one rng-rank{r}.pt per rank
  RUN/checkpoints/latest           the newest complete tag, written last (DeepSpeed's format)

A save goes to `step-N.tmp` and is renamed once every rank has written; `latest` moves only
after that, so a crash mid-save leaves the previous checkpoint as the one resumed from.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from angel_dist.atomic import atomic_path

_TAG = re.compile(r"^step-(\d{8})$")


def tag_of(step: int) -> str:
    return f"step-{step:08d}"


def latest_tag(root: str | Path) -> str | None:
    path = Path(root) / "latest"
    if not path.exists():
        return None
    tag = path.read_text().strip()
    if not (Path(root) / tag / "meta.json").exists():
        raise RuntimeError(f"{path} names {tag}, which is incomplete; the run directory was altered")
    return tag


def publish(root: str | Path, tmp_tag: str, tag: str, keep_last: int) -> None:
    """Rank 0, after every rank saved into root/tmp_tag: rename it, move `latest`, prune."""
    root = Path(root)
    final = root / tag
    if final.exists():  # a rerun reached the same step again: the new save replaces it
        shutil.rmtree(final)
    (root / tmp_tag).rename(final)
    with atomic_path(root / "latest") as tmp:
        tmp.write_text(tag)
    complete = sorted(p for p in root.iterdir() if p.is_dir() and _TAG.match(p.name))
    for old in complete[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(root / f"{old.name}.universal", ignore_errors=True)
    for stale in root.glob("step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def write_meta(dir_: str | Path, meta: dict) -> None:
    with atomic_path(Path(dir_) / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))


def read_meta(root: str | Path, tag: str) -> dict:
    return json.loads((Path(root) / tag / "meta.json").read_text())


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(dir_: str | Path, rank: int) -> None:
    torch.save(rng_state(), Path(dir_) / f"rng-rank{rank}.pt")


def load_rng(dir_: str | Path, rank: int) -> bool:
    path = Path(dir_) / f"rng-rank{rank}.pt"
    if not path.exists():
        return False
    set_rng_state(torch.load(path, weights_only=False))
    return True
