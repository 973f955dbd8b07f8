"""The shard outputs of `angel annotate` on disk, written as shard sets are (shards/writer.py):

  parts/plan.json           what the directory is being filled with (config hash); first
  parts/part-00000.jsonl    one shard's linked mentions, written under a temporary name, renamed
  parts/part-00000.json     then its record (lines, bytes, sha256, config hash): marks it complete

A rerun with the same plan skips complete parts; another plan is refused unless overwriting.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from angel_dist.atomic import atomic_path, write_json

PLAN = "plan.json"


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def part_path(parts: Path, index: int) -> Path:
    return parts / f"part-{index:05d}.jsonl"


def _record_path(parts: Path, index: int) -> Path:
    return parts / f"part-{index:05d}.json"


def part_record(parts: Path, index: int, config_hash_: str) -> dict | None:
    """The record of a complete part, or None."""
    path = _record_path(parts, index)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    data = part_path(parts, index)
    if record.get("config_hash") != config_hash_ or not data.exists() or data.stat().st_size != record["bytes"]:
        return None
    return record


def prepare_parts(parts: Path, config: dict, n_parts: int, overwrite: bool = False) -> list[int]:
    """Claim `parts` for `config`; returns the parts still to write."""
    parts.mkdir(parents=True, exist_ok=True)
    digest = config_hash(config)
    plan = parts / PLAN
    if plan.exists() and json.loads(plan.read_text())["config_hash"] != digest:
        if not overwrite:
            raise ValueError(f"{parts.parent} holds another annotation (other input, model or settings); choose a new "
                             f"--out or pass --overwrite")
        for path in parts.glob("part-*"):
            path.unlink()
    write_json(plan, {"config_hash": digest, "n_parts": n_parts, "config": config})
    return [i for i in range(n_parts) if part_record(parts, i, digest) is None]


def write_part(parts: Path, index: int, config_hash_: str, lines: list[str]) -> dict:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    with atomic_path(part_path(parts, index)) as tmp:  # fsynced before its rename
        tmp.write_bytes(data)
    record = {"lines": len(lines), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
              "config_hash": config_hash_}
    write_json(_record_path(parts, index), record)
    return record
