"""Checkpoint directories of a run: atomic, durable, checksummed, newest named by `latest`, the last k kept.

  RUN/checkpoints/step-00000100/   DeepSpeed's sharded save (every rank's shards), one
                                   rng-rank{r}.json per rank, and meta.json: step, reader
                                   position, world size, config, and the sha256 of every other file.
                                   Under the strategy's ZeRO-1 (ds_configs/zero1.json) the shards
                                   are its own: mp_rank_00_model_states.pt ({"module": the model's
                                   state dict}, as DeepSpeed's stage 0 writes it) and one
                                   optimizer-partition-RRRRR.pt per rank, a dict of layout (digest
                                   of parameter names and shapes), numel, world, rank, start, step,
                                   and the fp32 slices exp_avg, exp_avg_sq (and master for bf16
                                   parameters) of the flat parameter vector from `start`
  RUN/checkpoints/latest           the newest complete tag, written last (DeepSpeed's format)

A save goes to `step-N.tmp`; once every rank has written, rank 0 hashes and fsyncs its files,
writes meta.json, renames the directory and only then moves `latest`, so a crash or a power loss
mid-save leaves the previous checkpoint as the one resumed from. Loading checks every file against
meta.json first: `latest` vouches only for what was hashed when it was written. That costs a read of
the checkpoint at sha256's speed, seconds per GB, once per resume or export (and once more per save):
bart-large under ZeRO-2 with Adam keeps 14 bytes a parameter in bf16, 16 in fp32 (5.7 / 6.5 GB),
about 15 s at the 0.4 GB/s one core of this project's CPU machine hashes.

Our own state (step, reader position, RNG) is JSON; nothing of ours goes into DeepSpeed's
pickles, which are read through angel_dist.train.safe_load.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from angel_dist.atomic import atomic_path, fsync_path, fsync_tree, write_json
from angel_dist.digest import file_sha256
from angel_dist.errors import BadInputError, read_json

_TAG = re.compile(r"^step-(\d{8})$")
META = "meta.json"
_META_KEYS = ("step", "world_size", "config", "reader")


def tag_of(step: int) -> str:
    return f"step-{step:08d}"


def latest_tag(root: str | Path) -> str | None:
    path = Path(root) / "latest"
    if not path.exists():
        return None
    try:
        tag = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(path, None, f"expected a checkpoint tag such as step-00000100: {e}") from None
    if not _TAG.match(tag):
        raise BadInputError(path, None, f"expected a checkpoint tag such as step-00000100, found {tag[:40]!r}")
    if not (Path(root) / tag / META).exists():
        raise BadInputError(path, None, f"names {tag}, which is incomplete; the run directory was altered")
    return tag


def checksums(dir_: str | Path) -> dict[str, str]:
    """sha256 of every file under dir_ but its meta.json, by path relative to dir_."""
    dir_ = Path(dir_)
    return {p.relative_to(dir_).as_posix(): file_sha256(p)
            for p in sorted(dir_.rglob("*")) if p.is_file() and p.relative_to(dir_).as_posix() != META}


def record(dir_: str | Path, meta: dict) -> None:
    """Write dir_/meta.json: `meta` and the checksums of every other file under dir_."""
    write_json(Path(dir_) / META, {**meta, "files": checksums(dir_)})


def _read_record(dir_: Path, keys: tuple[str, ...]) -> dict:
    path = dir_ / META
    meta = read_json(path, "the checkpoint's metadata")
    missing = [k for k in ("files", *keys) if not isinstance(meta, dict) or k not in meta]
    if missing == ["files"]:
        raise BadInputError(path, None, "records no checksums (written by an angel-dist from before they were "
                                        "recorded), so its files cannot be checked and it is not loaded; start "
                                        "the run again in a new directory")
    if missing:
        raise BadInputError(path, None, f"expected the checkpoint's metadata; missing {', '.join(missing)}")
    files = meta["files"]
    if not (isinstance(files, dict) and all(isinstance(v, str) for v in files.values())):
        raise BadInputError(path, None, "expected `files` to map each file of the checkpoint to its sha256")
    return meta


def verify(dir_: str | Path, keys: tuple[str, ...] = ()) -> dict:
    """dir_/meta.json, after checking that the files under dir_ are exactly those it records,
    each with the sha256 it records."""
    dir_ = Path(dir_)
    meta = _read_record(dir_, keys)
    recorded, found = meta["files"], checksums(dir_)
    for name in sorted(set(found) | set(recorded)):
        if name not in recorded:
            raise BadInputError(dir_ / name, None, f"a file {META} does not record; refusing the checkpoint")
        if name not in found:
            raise BadInputError(dir_ / name, None, f"missing; {dir_ / META} records it")
        if found[name] != recorded[name]:
            raise BadInputError(dir_ / name, None, f"sha256 {found[name][:16]}... differs from the "
                                                   f"{recorded[name][:16]}... {dir_ / META} records")
    return meta


def publish(root: str | Path, tmp_tag: str, tag: str, meta: dict, keep_last: int) -> None:
    """Rank 0, after every rank saved into root/tmp_tag: record the checksums in meta.json, make
    it all durable, rename it, move `latest`, prune."""
    root = Path(root)
    tmp, final = root / tmp_tag, root / tag
    # Ranks of other nodes closed their files before the barrier; on a shared filesystem
    # (NFS: close-to-open) their data is then on the server, and this rank reads it from there.
    record(tmp, meta)
    fsync_tree(tmp)
    if final.exists():  # a rerun reached the same step again: the new save replaces it
        shutil.rmtree(final)
    tmp.rename(final)
    fsync_path(root)
    with atomic_path(root / "latest") as t:
        t.write_text(tag)
    complete = sorted(p for p in root.iterdir() if p.is_dir() and _TAG.match(p.name))
    for old in complete[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(root / f"{old.name}.universal", ignore_errors=True)
    for stale in root.glob("step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def read_meta(root: str | Path, tag: str) -> dict:
    """meta.json of checkpoint root/tag, unverified (cheap): what a rank reads once rank 0 verified."""
    return _read_record(Path(root) / tag, _META_KEYS)


def verified_meta(root: str | Path, tag: str) -> dict:
    """meta.json of checkpoint root/tag, after checking every file of it against meta.json."""
    return verify(Path(root) / tag, _META_KEYS)


def rng_state() -> dict:
    """This process's RNG states as JSON values."""
    version, mt, gauss = random.getstate()
    legacy = np.random.get_state(legacy=False)
    cuda = [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else None
    return {"python": {"version": version, "state": list(mt), "gauss_next": gauss},
            "numpy": {"key": legacy["state"]["key"].tolist(), "pos": legacy["state"]["pos"],
                      "has_gauss": legacy["has_gauss"], "gauss": legacy["gauss"]},
            "torch": torch.get_rng_state().tolist(), "cuda": cuda}


def set_rng_state(state: dict) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": np.array(npy["key"], dtype=np.uint32),
                                                                "pos": npy["pos"]},
                         "has_gauss": npy["has_gauss"], "gauss": npy["gauss"]})
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def rng_path(dir_: str | Path, rank: int) -> Path:
    return Path(dir_) / f"rng-rank{rank}.json"


def save_rng(dir_: str | Path, rank: int) -> None:
    write_json(rng_path(dir_, rank), rng_state())


def load_rng(dir_: str | Path, rank: int) -> bool:
    path = rng_path(dir_, rank)
    if not path.exists():
        return False
    state = read_json(path, f"the RNG states of rank {rank}")
    try:
        set_rng_state(state)
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as e:
        raise BadInputError(path, None, f"expected the RNG states of rank {rank} as rng_state() writes them: "
                                        f"{type(e).__name__}: {e}") from None
    return True
