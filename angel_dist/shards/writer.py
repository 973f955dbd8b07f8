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
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from angel_dist.atomic import atomic_path, write_json
from angel_dist.digest import file_sha256
from angel_dist.errors import BadInputError, read_json
from angel_dist.shards.format import SAMPLE_KINDS, SCHEMA_VERSION
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
    """The completion record of a shard, or None if the shard is missing or incomplete.

    The record vouches for the shard when it carries the plan's hash, the index has the
    recorded size and sha256, and the tar the recorded size. The tar's own sha256 is left to
    the reader, which checks it when a process first opens the shard: hashing every tar here
    would read the whole set again on each rerun (sha256 alone takes ~0.6 s of CPU per GB on
    the dev box, on top of reading the tars back from disk), while the tar was fsynced
    before its rename and its record written after it, so a tar of the recorded size under the
    final name is the one the record describes; the index is small enough to hash each time.
    A record that does not parse (torn by a crash) marks its shard incomplete, to be rewritten.
    """
    out = Path(out)
    tar, idx = out / shard_name(index), out / index_name(index)
    try:
        record = json.loads(_record_path(out, index).read_text())
        complete = (isinstance(record, dict) and record.get("config_hash") == config_hash
                    and record.get("name") == tar.name and record.get("index") == idx.name
                    and tar.is_file() and tar.stat().st_size == record["bytes"]
                    and idx.is_file() and idx.stat().st_size == record["index_bytes"]
                    and file_sha256(idx) == record["index_sha256"])
    except (OSError, ValueError, KeyError):
        return None
    return record if complete else None


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
    buf = io.BytesIO()
    np.save(buf, np.array(rows, dtype=np.int64).reshape(len(rows), 2))
    index_bytes = buf.getvalue()
    with atomic_path(out / index_name(index)) as tmp:
        tmp.write_bytes(index_bytes)
    record = {"name": shard_name(index), "index": index_name(index), "count": len(rows), "bytes": stream.bytes,
              "sha256": stream.sha.hexdigest(), "index_bytes": len(index_bytes),
              "index_sha256": hashlib.sha256(index_bytes).hexdigest(), "config_hash": config_hash,
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
        shards.append({k: record[k] for k in SHARD_ENTRY})
        stats.update(record["stats"])
    manifest = {"schema_version": SCHEMA_VERSION, "kind": plan.kind, "config_hash": plan.config_hash,
                "config": plan.config, **plan.fingerprints, "n_shards": plan.n_shards,
                "total": sum(s["count"] for s in shards), "shards": shards,
                "stats": dict(sorted(stats.items())), "counts": dict(sorted((counts or {}).items()))}
    write_json(out / MANIFEST, manifest)
    return manifest


# A manifest's fields and the JSON types it must give them (shards/README.md, manifest.json).
MANIFEST_FIELDS = {"schema_version": int, "kind": str, "config_hash": str, "config": dict,
                   "tokenizer_fingerprint": (str, type(None)), "kb_fingerprint": (str, type(None)),
                   "n_shards": int, "total": int, "shards": list, "stats": dict, "counts": dict}
SHARD_ENTRY = {"name": str, "index": str, "count": int, "bytes": int, "sha256": str, "index_bytes": int,
               "index_sha256": str}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is(value, expected) -> bool:
    return isinstance(value, expected) and not isinstance(value, bool)  # JSON true is no count


def read_manifest(out: str | Path) -> dict:
    """The manifest of a complete shard set, checked before anything trusts it: the fields and
    their types, counts that add up, file names confined to the set's directory and named once
    (readers then check that the files are there: `shards.reader.shards_of`). Raises
    BadInputError naming the manifest and the entry; FileNotFoundError when there is no
    manifest at all."""
    path = Path(out) / MANIFEST
    if not path.exists():
        hint = " (an unfinished write: rerun the command that makes it)" if (Path(out) / PLAN).exists() else ""
        raise FileNotFoundError(f"{out}: no {MANIFEST}, not a complete shard set{hint}")
    manifest = read_json(path, "a shard set's manifest")
    if not isinstance(manifest, dict):
        raise BadInputError(path, None, f"expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        older = (f"; sets of version {version} carry no index checksum: rebuild it with the command that wrote it "
                 f"and --overwrite" if _is(version, int) and version < SCHEMA_VERSION else "")
        raise BadInputError(path, None, f"shard schema version {version!r}, expected {SCHEMA_VERSION}{older}")
    _check_fields(path, "", manifest, MANIFEST_FIELDS)
    if manifest["kind"] not in SAMPLE_KINDS:
        raise BadInputError(path, None, f"kind {manifest['kind']!r}, expected one of {list(SAMPLE_KINDS)}")
    shards = manifest["shards"]
    if not shards or manifest["n_shards"] != len(shards):
        raise BadInputError(path, None, f"n_shards {manifest['n_shards']} but {len(shards)} shard entries")
    seen: set[str] = set()
    for i, entry in enumerate(shards):
        where = f"shards[{i}]"
        if not isinstance(entry, dict):
            raise BadInputError(path, None, f"{where}: expected an object, got {type(entry).__name__}")
        _check_fields(path, where + ".", entry, SHARD_ENTRY)
        for field in ("count", "bytes", "index_bytes"):
            if entry[field] < 0:
                raise BadInputError(path, None, f"{where}.{field} is negative ({entry[field]})")
        for field in ("sha256", "index_sha256"):
            if not _SHA256.fullmatch(entry[field]):
                raise BadInputError(path, None, f"{where}.{field} {entry[field][:80]!r} is not a sha256 hex digest")
        for field in ("name", "index"):
            name = entry[field]
            if name in (".", "..") or not name or any(c in name for c in "/\\\0") or Path(name).name != name:
                raise BadInputError(path, None, f"{where}.{field} {name[:200]!r}: expected a plain file name inside "
                                                f"{path.parent} (no directories, no '..')")
            if name in seen:
                raise BadInputError(path, None, f"{where}.{field} {name!r} is listed twice")
            seen.add(name)
    if manifest["total"] != sum(entry["count"] for entry in shards):
        raise BadInputError(path, None, f"total {manifest['total']} differs from the shards' counts "
                                        f"({sum(entry['count'] for entry in shards)})")
    return manifest


def _check_fields(path: Path, where: str, obj: dict, fields: dict) -> None:
    for field, expected in fields.items():
        if field not in obj:
            raise BadInputError(path, None, f"{where}{field} is missing")
        if not _is(obj[field], expected):
            raise BadInputError(path, None, f"{where}{field} is {str(obj[field])[:80]!r}, expected "
                                            f"{getattr(expected, '__name__', 'a string or null')}")
