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
import math
from functools import lru_cache

import numpy as np

from angel_dist.corpus.encode import Encoded

SCHEMA_VERSION = 2  # 2: the index's size and sha256 in each shard entry
FIELDS = ("json", "ids.npy")
ID_FIELDS = {"kb": ("source", "prefix", "target"), "mention": ("source", "prefix", "target"),
             "pair": ("source", "prefix", "chosen", "rejected")}
SAMPLE_KINDS = {"examples": ("kb", "mention"), "pairs": ("pair",)}  # what a set of each kind holds
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


_NPY_HEADER_MAX = 10_000  # numpy's own limit on what it will parse (np.load's max_header_size)


class SampleFormatError(ValueError):
    """A sample member that does not decode to what the format says, naming the member."""

    def __init__(self, member: str, problem: str):
        self.member, self.problem = member, problem
        super().__init__(f"{member}: {problem}")


@lru_cache(maxsize=4096)
def _parse_npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...]]:
    try:
        spec = ast.literal_eval(header.decode("latin1"))
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        raise ValueError(f".npy header is not a literal: {header[:80]!r}") from None
    if not isinstance(spec, dict) or set(spec) != {"descr", "fortran_order", "shape"}:
        raise ValueError(f".npy header is not a dict of descr, fortran_order and shape: {header[:80]!r}")
    descr, shape = spec["descr"], spec["shape"]
    if not isinstance(descr, str) or spec["fortran_order"] is not False:
        raise ValueError(f"unsupported .npy array {spec}")
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f".npy shape {shape!r} is not a tuple of sizes")
    try:
        dtype = np.dtype(descr)
    except TypeError:
        raise ValueError(f".npy dtype {descr!r} is not a numpy type") from None
    if dtype.kind not in "iuf" or dtype.fields is not None:  # plain numbers only: no objects, no records
        raise ValueError(f"unsupported .npy dtype {descr!r}")
    return dtype, shape


def parse_npy(data: bytes | memoryview) -> np.ndarray:
    """Read a .npy payload (format 1.0/2.0) of plain numbers without pickle; ValueError on
    anything else (a header that is not numpy's literal dict, a size that disagrees with it)."""
    data = memoryview(data)
    if bytes(data[:6]) != _NPY_MAGIC[:6] or len(data) < 10:
        raise ValueError("not a .npy payload")
    major, minor = data[6], data[7]
    if (major, minor) not in ((1, 0), (2, 0)):  # what numpy reads, less 3.0 (UTF-8 headers)
        raise ValueError(f"unsupported .npy format version {major}.{minor}")
    size_bytes = 2 if major == 1 else 4
    hlen = int.from_bytes(data[8:8 + size_bytes], "little")
    start = 8 + size_bytes
    if hlen > _NPY_HEADER_MAX or start + hlen > len(data):
        raise ValueError(f".npy header of {hlen} bytes does not fit")
    dtype, shape = _parse_npy_header(bytes(data[start:start + hlen]))
    body, size = data[start + hlen:], dtype.itemsize * math.prod(shape)
    if len(body) != size:
        raise ValueError(f".npy data is {len(body)} bytes, shape {shape} of {dtype} needs {size}")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


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


# What each JSON type name of RECORD_FIELDS accepts (JSON booleans are not numbers here).
_TYPES = {
    "string": lambda v: type(v) is str,
    "list of strings": lambda v: type(v) is list and all(type(x) is str for x in v),
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) in (int, float),
    "[start, end]": lambda v: type(v) is list and len(v) == 2 and type(v[0]) is int and type(v[1]) is int,
    "object": lambda v: type(v) is dict,
}
# The JSON fields each kind must carry (shards/README.md, "Samples").
_EXAMPLE_FIELDS = {"source": "string", "prefix": "string", "target": "string", "cuis": "list of strings",
                   "mention_span": "[start, end]", "meta": "object"}
RECORD_FIELDS = {
    "kb": _EXAMPLE_FIELDS, "mention": _EXAMPLE_FIELDS,
    "pair": {"prompt": "string", "prefix": "string", "chosen": "string", "rejected": "string",
             "cuis": "list of strings", "chosen_cuis": "list of strings", "rejected_cuis": "list of strings",
             "chosen_rank": "integer", "rejected_rank": "integer", "round": "integer", "source_key": "string",
             "ref_chosen_logp": "number", "ref_rejected_logp": "number"},
}
_CHECKS = {kind: [(field, expected, _TYPES[expected]) for field, expected in fields.items()]
           for kind, fields in RECORD_FIELDS.items()}
IDS_DTYPE = np.dtype("<i4")


def _check_record(member: str, record) -> tuple[str, ...]:
    """The id field names of a decoded JSON record, after checking every field's type."""
    if not isinstance(record, dict):
        raise SampleFormatError(member, f"expected a JSON object, got {type(record).__name__}")
    names = ID_FIELDS.get(record.get("kind")) if isinstance(record.get("kind"), str) else None
    if names is None:
        raise SampleFormatError(member, f"unknown kind {record.get('kind')!r} (expected one of {sorted(ID_FIELDS)})")
    lengths = record.get("lengths")
    if not (type(lengths) is list and len(lengths) == len(names) and all(type(n) is int and n >= 0 for n in lengths)):
        raise SampleFormatError(member, f"lengths {lengths!r}: expected {len(names)} counts ({', '.join(names)})")
    for field, expected, ok in _CHECKS[record["kind"]]:
        if not ok(record.get(field)):  # a missing field is None, which no type accepts
            found = repr(record[field])[:80] if field in record else "missing"
            raise SampleFormatError(member, f"field {field!r} is {found}, expected {expected}")
    return names


def decode_sample(key: str, fields: dict[str, bytes]) -> dict:
    """A sample from its raw members: the JSON record plus `__key__` and its `*_ids` arrays.

    Raises SampleFormatError naming the member that does not hold what the format says."""
    missing = [f for f in FIELDS if f not in fields]
    if missing:
        raise SampleFormatError(f"{key}.{missing[0]}", "member missing from the sample")
    member = f"{key}.json"
    try:
        record = json.loads(bytes(fields["json"]).decode("utf-8"))  # not json's guess among UTF-8/16/32
    except (ValueError, RecursionError) as e:  # ValueError covers bad JSON and bad UTF-8
        raise SampleFormatError(member, f"not UTF-8 JSON ({type(e).__name__}: {str(e)[:200]})") from None
    names = _check_record(member, record)
    member = f"{key}.ids.npy"
    try:
        ids = parse_npy(fields["ids.npy"])
    except ValueError as e:
        raise SampleFormatError(member, str(e)) from None
    if ids.dtype != IDS_DTYPE or ids.ndim != 1:
        raise SampleFormatError(member, f"expected a 1-D {IDS_DTYPE.str} array, got {ids.dtype.str} of shape "
                                        f"{ids.shape}")
    if len(ids) != sum(record["lengths"]):
        raise SampleFormatError(member, f"holds {len(ids)} ids, {key}.json lengths say {record['lengths']}")
    record["__key__"] = key
    bounds = np.cumsum([0, *record["lengths"]])
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        record[f"{name}_ids"] = ids[lo:hi]
    return record
