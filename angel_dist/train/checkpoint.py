"""Checkpoint directories of a run: atomic, durable, checksummed, newest named by `latest`, the last k kept.

  RUN/checkpoints/step-00000100/   DeepSpeed's sharded save (every rank's shards: rank 0
                                   mp_rank_00_model_states.pt below ZeRO-3, each rank its
                                   zero_pp_rank_R_mp_rank_00_model_states.pt under ZeRO-3 and its
                                   [bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt under ZeRO-2
                                   and 3: strategy.deepspeed_files), one rng-rank{r}.json per rank, and
                                   meta.json: step, reader position, world size, config, and the
                                   sha256 of every other file.
                                   Under the strategy's ZeRO-1 (ds_configs/zero1.json) the shards
                                   are its own: mp_rank_00_model_states.pt ({"module": the model's
                                   state dict}, as DeepSpeed's stage 0 writes it) and one
                                   optimizer-partition-RRRRR.pt per rank, a dict of layout (digest
                                   of parameter names and shapes), numel, world, rank, start, step,
                                   and the fp32 slices exp_avg, exp_avg_sq (and master for bf16
                                   parameters) of the flat parameter vector from `start`
  RUN/checkpoints/latest           the newest complete tag, written last (DeepSpeed's format)

A save goes to `step-N.tmp` (emptied first of what a save a crash cut short left). Every rank
writes its files (`DeepSpeedStrategy.save` returns their names), then fsyncs and hashes them
itself (`claim`), all ranks at once; the claims are gathered (`gather_claims`). Rank 0 checks
that every file it sees there was claimed (one no rank claimed fails the save, naming it: that
keeps the strategy's names honest), writes meta.json from the claims, fsyncs the directories,
renames the directory and only then moves `latest`, so a crash or a power loss mid-save leaves
the previous checkpoint as the one resumed from. Rank 0 reads no file of a peer's: on NFS with
attribute caching its listing can lag behind a peer's fresh file (which, when rank 0 hashed
everything, could go unrecorded and then refuse the checkpoint on resume).

Loading checks every file against meta.json first: `latest` vouches only for what was hashed
when it was written. A resume shares that out (rank r hashes the recorded files r, r + world,
... in name order, a file opened by name; rank 0 compares the gathered hashes and lists the
directory for files meta.json does not record); `angel export` and the universal conversion
check in one process. Hashing reads at sha256's speed, seconds per GB: bart-large under ZeRO-2
with Adam keeps 14 bytes a parameter in bf16, 16 in fp32 (5.7 / 6.5 GB), about 15 s at the
0.4 GB/s one core of this project's CPU machine hashes. On W ranks the slowest share sets the
time: at a save, what its largest writer wrote (under ZeRO-2 rank 0's model states, 2 or 4
bytes a parameter, and its 1/W of the optimizer's 12: on 8 bf16 ranks a quarter of the whole);
at a resume, each rank's share of the files by name.

Our own state (step, reader position, RNG) is JSON; nothing of ours goes into DeepSpeed's
pickles, which are read through angel_dist.train.safe_load.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from angel_dist.atomic import atomic_path, fsync_path, write_json
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


def _listing(dir_: Path) -> list[str]:
    """Every file under dir_ but its meta.json, by path relative to dir_."""
    return [p.relative_to(dir_).as_posix() for p in sorted(dir_.rglob("*"))
            if p.is_file() and p.relative_to(dir_).as_posix() != META]


def _hashes(dir_: Path, names) -> dict[str, str]:
    """sha256 of each of `names` (relative to dir_) that is a file; opened by name, which on NFS
    revalidates what a cached directory listing may not show yet."""
    return {name: file_sha256(dir_ / name) for name in names if (dir_ / name).is_file()}


def record(dir_: str | Path, meta: dict) -> None:
    """Write dir_/meta.json: `meta` and the sha256 of every other file under dir_, all hashed in
    this process (a universal conversion's output; a save's ranks each hash their own: `claim`)."""
    write_json(Path(dir_) / META, {**meta, "files": _hashes(Path(dir_), _listing(Path(dir_)))})


def claim(dir_: str | Path, files: list[Path]) -> dict[str, str]:
    """The files this rank wrote into checkpoint dir_, made durable and hashed here, by the rank
    that wrote them: {path relative to dir_: sha256}."""
    dir_ = Path(dir_)
    for f in files:
        fsync_path(f)
    return _hashes(dir_, [Path(f).relative_to(dir_).as_posix() for f in files])


def gather_claims(dir_: str | Path, files: list[Path]) -> dict[str, str]:
    """Every rank, after a save into dir_: its files claimed (`claim`), then every rank's claims,
    gathered: the sha256 of each file of the checkpoint, none hashed by a rank that did not write
    it. A file claimed by two ranks is an error (they would have written it at once)."""
    import torch.distributed as dist

    claims: list = [None] * dist.get_world_size()
    dist.all_gather_object(claims, claim(dir_, files))
    files_of: dict[str, str] = {}
    for rank, claimed in enumerate(claims):
        for name, digest in claimed.items():
            if name in files_of:
                raise RuntimeError(f"{Path(dir_) / name}: written by two ranks (rank {rank} and an earlier one)")
            files_of[name] = digest
    return files_of


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
    # Each recorded file is opened by its name to be checked: none may lead out of the checkpoint.
    if not (isinstance(files, dict) and all(isinstance(v, str) for v in files.values())
            and all(k and not k.startswith("/") and ".." not in k.split("/") for k in files)):
        raise BadInputError(path, None, "expected `files` to map each file of the checkpoint (a path inside it) to "
                                        "its sha256")
    return meta


def verify(dir_: str | Path, keys: tuple[str, ...] = (), rank: int = 0, world: int = 1) -> dict:
    """dir_/meta.json, after checking that the files under dir_ are exactly those it records,
    each with the sha256 it records. With `world` > 1, every rank of the process group calls it
    and hashes a share of the files (rank r the recorded names r, r + world, ... in name order);
    the hashes are gathered and rank 0 compares them and lists dir_ for files meta.json does not
    record (a refusal is rank 0's: the others go on to wait for it)."""
    dir_ = Path(dir_)
    meta = _read_record(dir_, keys)
    recorded = meta["files"]
    found = _hashes(dir_, sorted(recorded)[rank::world])
    if world > 1:
        import torch.distributed as dist

        shares: list = [None] * world
        dist.all_gather_object(shares, found)
        found = {name: digest for share in shares for name, digest in share.items()}
    if rank == 0:
        _compare(dir_, recorded, found, _listing(dir_))
    return meta


def _compare(dir_: Path, recorded: dict[str, str], found: dict[str, str], listing: list[str]) -> None:
    """The hashes `found` of the recorded files against `recorded`, and the files `listing` sees
    under dir_: all recorded (a listing may lag on NFS, so a recorded file it misses is judged by
    whether hashing it found it)."""
    for name in sorted(set(listing) | set(recorded)):
        if name not in recorded:
            raise BadInputError(dir_ / name, None, f"a file {META} does not record; refusing the checkpoint")
        if name not in found:
            raise BadInputError(dir_ / name, None, f"missing; {dir_ / META} records it")
        if found[name] != recorded[name]:
            raise BadInputError(dir_ / name, None, f"sha256 {found[name][:16]}... differs from the "
                                                   f"{recorded[name][:16]}... {dir_ / META} records")


def publish(root: str | Path, tmp_tag: str, tag: str, meta: dict, files: dict[str, str], keep_last: int) -> None:
    """Rank 0, once every rank saved into root/tmp_tag and claimed its files (`gather_claims`:
    `files`, each hashed and fsynced by the rank that wrote it): check that every file this rank
    sees there was claimed, write meta.json with `meta` and `files`, make the directories durable,
    rename it, move `latest`, prune. Nothing of a peer's is read here: on NFS with attribute
    caching this rank's listing may lag behind a peer's fresh file, which it then need not see."""
    root = Path(root)
    tmp, final = root / tmp_tag, root / tag
    unclaimed = sorted(set(_listing(tmp)) - set(files))
    if unclaimed:
        raise BadInputError(tmp / unclaimed[0], None, f"written into the checkpoint by no rank's save (of "
                                                      f"{len(unclaimed)} such file(s)): the strategy's list of the "
                                                      f"files each rank writes misses it; {tmp_tag} is not published")
    write_json(tmp / META, {**meta, "files": files})
    for directory, _, _ in os.walk(tmp):
        fsync_path(directory)
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


def verified_meta(root: str | Path, tag: str, rank: int = 0, world: int = 1) -> dict:
    """meta.json of checkpoint root/tag, after checking every file of it against meta.json (with
    `world` > 1 by every rank of the process group, each hashing a share: `verify`)."""
    return verify(Path(root) / tag, _META_KEYS, rank, world)


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


def save_rng(dir_: str | Path, rank: int) -> Path:
    write_json(rng_path(dir_, rank), rng_state())
    return rng_path(dir_, rank)


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
