"""Shard sets on disk: a plan, shards written atomically, a manifest written last.

  plan.json              what this directory is being filled with (config hash); first
  shard-00000.tar ...    each written under a temporary name, fsynced, renamed
  shard-00000.idx.npy    int64 [count, 2]: each sample's byte offset in the tar and its source length
  shard-00000.json ...   after its tar and index: count, bytes, sha256, stats; marks it complete
  manifest.json          last, once every shard is complete

A rerun with the same plan skips complete shards and redoes the rest; a run killed at any
moment leaves no manifest listing a shard that is incomplete, because the manifest is
written only after every shard's tar and record exist.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from angel_dist.atomic import atomic_path, write_json
from angel_dist.shards.format import SCHEMA_VERSION
from angel_dist.shards.tar import TarStreamWriter

PLAN, MANIFEST = "plan.json", "manifest.json"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.tar"


def _record_path(out: Path, index: int) -> Path:
    return out / f"shard-{index:05d}.json"


def index_name(index: int) -> str:
    return f"shard-{index:05d}.idx.npy"


@dataclass(frozen=True)
class ShardSetPlan:
    out: Path
    kind: str  # "examples" | "pairs"
    n_shards: int
    config: dict
    fingerprints: dict  # tokenizer_fingerprint, kb_fingerprint

    @property
    def config_hash(self) -> str:
        payload = json.dumps({"schema_version": SCHEMA_VERSION, "kind": self.kind, "n_shards": self.n_shards,
                              "config": self.config, **self.fingerprints}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def prepare(plan: ShardSetPlan, overwrite: bool = False) -> list[int]:
    """Claim `plan.out` for this plan and return the shards still to write.

    A directory holding another plan is an error unless `overwrite`, which clears it."""
    out = Path(plan.out)
    out.mkdir(parents=True, exist_ok=True)
    existing = out / PLAN
    if existing.exists():
        old = json.loads(existing.read_text()).get("config_hash")
        if old != plan.config_hash:
            if not overwrite:
                raise ValueError(f"{out} holds another shard set (config hash {old}, this run {plan.config_hash}); "
                                 f"choose a new --out or pass --overwrite")
            for path in out.iterdir():
                if path.is_file() and (path.name.startswith(("shard-", ".shard-")) or path.name in (PLAN, MANIFEST)):
                    path.unlink()
    for path in out.glob(".shard-*.tmp-*"):  # left by a killed writer
        path.unlink()
    write_json(existing, {"config_hash": plan.config_hash, "kind": plan.kind, "n_shards": plan.n_shards,
                          "config": plan.config, **plan.fingerprints})
    pending = [i for i in range(plan.n_shards) if shard_record(out, i, plan.config_hash) is None]
    if pending:  # a manifest must never list a shard that is being (re)written
        (out / MANIFEST).unlink(missing_ok=True)
    return pending


def shard_record(out: Path, index: int, config_hash: str) -> dict | None:
    """The completion record of a shard, or None if the shard is missing or incomplete."""
    path = _record_path(Path(out), index)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    tar = Path(out) / record["name"]
    if record.get("config_hash") != config_hash or not tar.exists() or tar.stat().st_size != record["bytes"] \
            or not (Path(out) / index_name(index)).exists():
        return None
    return record


class _HashingFile:
    def __init__(self, f):
        self.f, self.sha, self.bytes = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> None:
        self.f.write(data)
        self.sha.update(data)
        self.bytes += len(data)


def write_shard(out: str | Path, index: int, config_hash: str,
                samples: Iterable[tuple[list[tuple[str, bytes]], int]], stats: Counter | None = None) -> dict:
    """Write one shard from (members, source length) per sample, then its index, then its record."""
    out = Path(out)
    rows: list[tuple[int, int]] = []
    with atomic_path(out / shard_name(index)) as tmp:
        with open(tmp, "wb") as f:
            stream = _HashingFile(f)
            writer = TarStreamWriter(stream)
            for members, length in samples:
                rows.append((stream.bytes, length))
                for name, data in members:
                    writer.add(name, data)
            writer.close()
            f.flush()
            os.fsync(f.fileno())
    with atomic_path(out / index_name(index)) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.array(rows, dtype=np.int64).reshape(len(rows), 2))
    record = {"name": shard_name(index), "index": index_name(index), "count": len(rows), "bytes": stream.bytes,
              "sha256": stream.sha.hexdigest(), "config_hash": config_hash,
              "stats": dict(sorted((stats or {}).items()))}
    write_json(_record_path(out, index), record)
    return record


def finish(plan: ShardSetPlan, counts: dict | None = None) -> dict:
    """Write manifest.json from the shard records; every shard must be complete."""
    out = Path(plan.out)
    shards, stats = [], Counter()
    for i in range(plan.n_shards):
        record = shard_record(out, i, plan.config_hash)
        if record is None:
            raise RuntimeError(f"{out / shard_name(i)} is missing or incomplete; rerun to complete the set")
        shards.append({k: record[k] for k in ("name", "index", "count", "bytes", "sha256")})
        stats.update(record["stats"])
    manifest = {"schema_version": SCHEMA_VERSION, "kind": plan.kind, "config_hash": plan.config_hash,
                "config": plan.config, **plan.fingerprints, "n_shards": plan.n_shards,
                "total": sum(s["count"] for s in shards), "shards": shards,
                "stats": dict(sorted(stats.items())), "counts": dict(sorted((counts or {}).items()))}
    write_json(out / MANIFEST, manifest)
    return manifest


def read_manifest(out: str | Path) -> dict:
    path = Path(out) / MANIFEST
    if not path.exists():
        hint = " (an unfinished write: rerun the command that makes it)" if (Path(out) / PLAN).exists() else ""
        raise FileNotFoundError(f"{out}: no {MANIFEST}, not a complete shard set{hint}")
    manifest = json.loads(path.read_text())
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: shard schema version {manifest.get('schema_version')}, expected {SCHEMA_VERSION}")
    return manifest
