"""The example sample as tar members (see shards/README.md for the full contract).

Each sample is two members sharing the key:
  {key}.json     the text fields, "kind" and "lengths" of the id arrays
  {key}.ids.npy  int32: the id arrays of the kind, concatenated
    kb / mention  source_ids, prefix_ids, target_ids
    pair          source_ids, prefix_ids, chosen_ids, rejected_ids
Two members instead of one per field: each tar member costs a 512-byte header plus padding,
which would triple the size of a shard of short examples.
"""

from __future__ import annotations

import ast
import json
from functools import lru_cache

import numpy as np

from angel_dist.corpus.encode import Encoded

SCHEMA_VERSION = 1
FIELDS = ("json", "ids.npy")
ID_FIELDS = {"kb": ("source", "prefix", "target"), "mention": ("source", "prefix", "target"),
             "pair": ("source", "prefix", "chosen", "rejected")}
_NPY_MAGIC = b"\x93NUMPY\x01\x00"


def npy_bytes(array: np.ndarray) -> bytes:
    """A 1-D little-endian int32 array in .npy format 1.0 (what numpy.save writes for it)."""
    array = np.ascontiguousarray(array, dtype="<i4")
    return _npy_header(len(array)) + array.tobytes()


@lru_cache(maxsize=4096)
def _npy_header(n: int) -> bytes:
    text = "{'descr': '<i4', 'fortran_order': False, 'shape': (%d,), }" % n
    pad = -(len(_NPY_MAGIC) + 2 + len(text) + 1) % 64
    text = text + " " * pad + "\n"
    return _NPY_MAGIC + len(text).to_bytes(2, "little") + text.encode("latin1")


@lru_cache(maxsize=4096)
def _parse_npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...]]:
    spec = ast.literal_eval(header.decode("latin1"))
    if spec.get("fortran_order") or np.dtype(spec["descr"]).hasobject:
        raise ValueError(f"unsupported .npy array {spec}")
    return np.dtype(spec["descr"]), tuple(spec["shape"])


def parse_npy(data: bytes | memoryview) -> np.ndarray:
    """Read a .npy payload (format 1.x/2.x) without pickle."""
    data = memoryview(data)
    if bytes(data[:6]) != _NPY_MAGIC[:6]:
        raise ValueError("not a .npy payload")
    major = data[6]
    size_bytes = 2 if major == 1 else 4
    hlen = int.from_bytes(data[8:8 + size_bytes], "little")
    start = 8 + size_bytes
    dtype, shape = _parse_npy_header(bytes(data[start:start + hlen]))
    return np.frombuffer(data[start + hlen:], dtype=dtype).reshape(shape)


def members(key: str, record: dict, ids: list[np.ndarray]) -> list[tuple[str, bytes]]:
    """The two members of a sample: `record` (its text fields and kind) and its id arrays in
    the kind's order."""
    names = ID_FIELDS[record["kind"]]
    if len(ids) != len(names):
        raise ValueError(f"a {record['kind']} sample has id arrays {names}, got {len(ids)} arrays")
    record = {**record, "lengths": [len(a) for a in ids]}
    return [(f"{key}.json", json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()),
            (f"{key}.ids.npy", npy_bytes(np.concatenate(ids) if ids else np.zeros(0, np.int32)))]


def sample_members(encoded: Encoded) -> list[tuple[str, bytes]]:
    e = encoded.example
    record = {"source": e.source, "prefix": e.prefix, "target": e.target, "cuis": e.cuis, "kind": e.kind,
              "mention_span": list(e.mention_span), "meta": e.meta}
    return members(e.key, record, [encoded.source_ids, encoded.prefix_ids, encoded.target_ids])


def decode_sample(key: str, fields: dict[str, bytes]) -> dict:
    """A sample from its raw members: the JSON record plus `__key__` and its `*_ids` arrays."""
    missing = [f for f in FIELDS if f not in fields]
    if missing:
        raise ValueError(f"sample {key!r} lacks member(s) {', '.join(key + '.' + f for f in missing)}")
    record = json.loads(bytes(fields["json"]))
    ids = parse_npy(fields["ids.npy"])
    names = ID_FIELDS.get(record.get("kind"))
    if names is None or len(record.get("lengths", ())) != len(names):
        raise ValueError(f"sample {key!r}: unknown kind {record.get('kind')!r} or lengths {record.get('lengths')}")
    if len(ids) != sum(record["lengths"]):
        raise ValueError(f"sample {key!r}: {key}.ids.npy holds {len(ids)} ids, lengths say {record['lengths']}")
    record["__key__"] = key
    bounds = np.cumsum([0, *record["lengths"]])
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        record[f"{name}_ids"] = ids[lo:hi]
    return record
