"""Shard sets verified once, for every process that reads them: `verified.json` beside the manifest.

The full check of a shard (its tar's sha256 against the manifest and the walk of every member
against its index: `reader.open_tar` with `verify`) reads the whole tar and spends 15-40 µs of
Python per sample. When every process made it on first opening a shard, every rank and each of
its DataLoader workers (new ones every epoch) read the whole set again: for 32 ranks over the
~27 GB of a UMLS set, ~1 TB per epoch. Now a stage's driver (training, mining, evaluation)
verifies, on Ray tasks, what the set's record does not vouch for and records it before it starts
ranks or actors; readers skip the hash and the walk of a tar the record vouches for, and check
the rest as before (its size, the index's sha256 and offsets, each sample as it is decoded).
A reader that finds no record verifies each tar it opens itself.

The record vouches for a tar while the file has the size, mtime_ns and ctime_ns it had when it
passed, under the manifest (its sha256) and the checks (VERIFIER) it passed. Rewriting,
truncating, replacing, restoring or copying a tar changes them (`touch` sets an mtime back, but
a ctime cannot be set back), so such a tar is verified again; so is a set received from elsewhere,
record and all, where it lands. What it cannot catch is written in shards/README.md ("Verified
once per set").
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import replace
from pathlib import Path

from angel_dist.atomic import write_json
from angel_dist.digest import file_sha256
from angel_dist.shards.writer import MANIFEST

RECORD = "verified.json"
VERIFIER = 1  # raised when the full check grows: a record of an older one then vouches for nothing
_FIELDS = ("bytes", "mtime_ns", "ctime_ns")
# Less than this is checked in the driver: ~1 s of work there, less than starting Ray's workers takes.
_ON_TASKS_FROM = 64 << 20


def file_identity(stat: os.stat_result) -> tuple[int, int, int]:
    """What a record keeps of a file: a change to its content through the filesystem changes it.
    Not the inode: a network filesystem may number one file differently on every node."""
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def vouched_tars(directory: Path, manifest: dict) -> dict[str, tuple[int, int, int]]:
    """{tar name: identity} of the set's tars its record vouches for and that are unchanged since;
    none without a record, or with one written for another manifest or by another verifier. Warns
    when the record vouched for tars that changed since: each process then verifies them."""
    path = directory / RECORD
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        warnings.warn(f"{path}: cannot read it ({e}); each process verifies the shards it opens")
        return {}
    entries = record.get("shards") if isinstance(record, dict) else None
    if not (isinstance(entries, dict) and all(isinstance(e, dict) and all(type(e.get(k)) is int for k in _FIELDS)
                                              for e in entries.values())):
        warnings.warn(f"{path}: expected `shards` to map each tar to its {', '.join(_FIELDS)}; ignoring it (each "
                      f"process verifies the shards it opens)")
        return {}
    if record.get("verifier") != VERIFIER or record.get("manifest_sha256") != file_sha256(directory / MANIFEST):
        return {}
    vouched, changed = {}, []
    for name in (s["name"] for s in manifest["shards"]):
        if name in entries:
            recorded = tuple(entries[name][k] for k in _FIELDS)
            if file_identity(os.stat(directory / name)) == recorded:
                vouched[name] = recorded
            else:
                changed.append(name)
    if changed:
        warnings.warn(f"{path}: {len(changed)} shard(s) changed since they were verified ({changed[0]}, ...: size or "
                      f"times differ); each process verifies them as it opens them")
    return vouched


def verified_shard_sets(dirs, tokenizer_fingerprint: str | None = None, progress: bool = True):
    """`reader.open_shard_sets` for a stage's driver: each shard the sets' records do not vouch for
    is verified (on Ray tasks, one per shard; under 64 MB in all, here) and recorded, so that the
    ranks and actors it starts next read them unverified. The shards it returns carry that
    knowledge to actors also where the record cannot be written (read-only storage: training ranks
    then verify as they open, as a warning says). A shard that fails is refused (BadInputError),
    once the others are recorded."""
    from angel_dist.shards.distributed import run_shard_tasks
    from angel_dist.shards.reader import open_shard_sets

    shards, kind = open_shard_sets(dirs, tokenizer_fingerprint)
    pending = [i for i, shard in enumerate(shards) if shard.vouched is None]
    if not pending:
        return shards, kind
    if sum(shards[i].bytes for i in pending) < _ON_TASKS_FROM:
        results = {i: verify_shard(i, shards) for i in pending}
    else:
        results = run_shard_tasks(verify_shard, pending, (shards,), progress=progress, desc="verify shards")["records"]
    shards = [replace(s, vouched=tuple(results[i]["identity"])) if "identity" in results.get(i, {}) else s
              for i, s in enumerate(shards)]
    for directory in dict.fromkeys(Path(shards[i].path).parent for i in pending):
        _record(directory, [s for s in shards if Path(s.path).parent == directory and s.vouched is not None])
    failed = [results[i]["error"] for i in pending if "error" in results[i]]
    if failed:
        raise failed[0]
    return shards, kind


def verify_shard(index: int, shards: list) -> dict:
    """A Ray task: the full check of shards[index]; the identity of the file that passed it, or the error."""
    from angel_dist.errors import BadInputError
    from angel_dist.shards.reader import check_tar, load_index, map_tar

    shard = shards[index]
    try:
        offsets = load_index(shard)[:, 0]
        buf, seen = map_tar(shard)
        check_tar(buf, shard, offsets, verify=True)
    except BadInputError as e:
        return {"count": shard.count, "error": e}
    return {"count": shard.count, "identity": list(seen)}


def _record(directory: Path, shards: list) -> None:
    record = {"verifier": VERIFIER, "manifest_sha256": file_sha256(directory / MANIFEST),
              "shards": {Path(s.path).name: dict(zip(_FIELDS, s.vouched)) for s in shards}}
    try:
        write_json(directory / RECORD, record)
    except OSError as e:
        warnings.warn(f"{directory / RECORD}: cannot write it ({e.strerror or e}); training ranks verify each shard "
                      f"of {directory} they open themselves")
