"""The KB table: one row per concept, the contract between KB readers and every later stage.

Columns (Parquet):
  cui          string        the concept id (UMLS CUI, MeSH id, HP:..., DOID:..., OMIM:...)
  names        list<string>  normalized, deduplicated, preferred name first
  definitions  list<string>  raw text
  types        list<string>  semantic types (UMLS TUIs) where the source has them
  sources      list<string>  vocabularies the names came from (UMLS SABs; the ontology for OBO)
  alt_ids      list<string>  other ids of the same concept (MEDIC's OMIM ids, OBO alt_id)
  xrefs        list<string>  cross-references to other vocabularies (OBO xref)

The schema metadata key `angel_dist.kb` holds JSON: schema version, reader format, build
config, counts and the content fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from angel_dist.atomic import atomic_path
from angel_dist.kb.normalize import normalize_names

SCHEMA_VERSION = 1
META_KEY = b"angel_dist.kb"
LIST_COLUMNS = ("names", "definitions", "types", "sources", "alt_ids", "xrefs")
_STR_LIST = pa.list_(pa.string())
SCHEMA = pa.schema([("cui", pa.string())] + [(c, _STR_LIST) for c in LIST_COLUMNS])


def assemble_kb(names: pa.Table, attributes: pa.Table | None = None) -> tuple[pa.Table, dict]:
    """Build the KB table from long-form name rows and per-concept attributes.

    `names` has columns `cui`, `name` (raw text), one row per name, preferred name first
    within a concept; concepts come out in the order of their first row. `attributes` has
    `cui` and any of the list columns except `names`, at most one row per concept.
    Returns the table and counts (empty names dropped, concepts left with no name).
    """
    normalized = normalize_names(names["name"])
    nonempty = pc.fill_null(pc.greater(pc.utf8_length(normalized), 0), False)
    long = pa.table({"cui": names["cui"], "name": normalized}).filter(nonempty)
    # A concept may appear only among the attributes (a term whose names were all empty or absent).
    ids = [names["cui"]] + ([attributes["cui"]] if attributes is not None else [])
    all_cuis = pc.unique(pa.chunked_array([c for col in ids for c in pa.chunked_array(col).chunks], pa.string()))
    cuis, lists = distinct_lists(long["cui"], long["name"])
    table = pa.table({"cui": cuis, "names": lists})
    counts = {
        "name_rows": names.num_rows,
        "empty_names_dropped": names.num_rows - long.num_rows,
        "concepts_without_names": len(all_cuis) - table.num_rows,
    }
    if attributes is not None:
        if len(pc.unique(attributes["cui"])) != attributes.num_rows:
            raise ValueError("attributes must have at most one row per concept")
        # Acero joins cannot carry list columns; a take by position keeps the order too.
        attributes = attributes.take(pc.index_in(table["cui"], value_set=attributes["cui"]))
    columns = {"cui": table["cui"]}
    for name in LIST_COLUMNS:
        if name in table.column_names:
            columns[name] = table[name]
        elif attributes is not None and name in attributes.column_names:
            col = attributes[name].cast(_STR_LIST)
            columns[name] = pc.if_else(pc.is_null(col), pa.scalar([], _STR_LIST), col)
        else:
            columns[name] = pa.array([[]] * table.num_rows, _STR_LIST)
    return pa.table(columns, schema=SCHEMA), counts


def distinct_lists(keys: pa.Array | pa.ChunkedArray, values: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.ListArray]:
    """Each distinct key, in the order keys first appear, with its distinct values in the order they
    first appear: (keys, list array). The order comes from row numbers, not from Arrow's hash
    group_by, which keeps it for some inputs only, threads or not."""
    rows = pa.table({"key": keys, "value": values, "row": pa.array(np.arange(len(keys), dtype=np.int64))})
    pairs = rows.group_by(["key", "value"], use_threads=False).aggregate([("row", "min")]).sort_by("row_min")
    # A dictionary holds its values in the order they first appear.
    encoded = pc.dictionary_encode(pairs["key"].combine_chunks())
    group = encoded.indices.to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(group, minlength=len(encoded.dictionary)))])
    values = pairs["value"].combine_chunks().take(pa.array(np.argsort(group, kind="stable")))
    return encoded.dictionary, pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def fingerprint(table: pa.Table) -> str:
    """A content hash of the KB table (independent of Parquet encoding and Arrow version)."""
    h = hashlib.sha256(f"angel-kb-v{SCHEMA_VERSION}".encode())
    for name in SCHEMA.names:
        col = table[name]
        lists = pc.list_value_length(col).to_numpy(zero_copy_only=False) if name != "cui" else None
        values = pc.list_flatten(col) if name != "cui" else col
        h.update(name.encode())
        if lists is not None:
            h.update(np.ascontiguousarray(lists, dtype="<i8").tobytes())
        _hash_strings(h, values)
    return h.hexdigest()[:32]


def _hash_strings(h, values: pa.ChunkedArray | pa.Array) -> None:
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    for chunk in chunks:
        chunk = chunk.cast(pa.large_string())
        lengths = pc.binary_length(chunk).to_numpy(zero_copy_only=False)
        h.update(np.ascontiguousarray(lengths, dtype="<i8").tobytes())
        offsets = np.frombuffer(chunk.buffers()[1], dtype="<i8")[chunk.offset: chunk.offset + len(chunk) + 1]
        if len(chunk):
            h.update(memoryview(chunk.buffers()[2])[offsets[0]: offsets[-1]])


def check_file_out(path: str | Path) -> None:
    """Refuse an output path that is a directory before any work is done."""
    if Path(path).is_dir():
        raise ValueError(f"{path}: is a directory; expected the path of a file to write (e.g. kb.parquet)")


def write_kb(table: pa.Table, path: str | Path, info: dict) -> dict:
    """Write the KB table atomically; returns the metadata written (with the fingerprint)."""
    check_file_out(path)
    table = table.cast(SCHEMA)
    meta = dict(info, schema_version=SCHEMA_VERSION, fingerprint=fingerprint(table),
                concepts=table.num_rows, names=int(pc.sum(pc.list_value_length(table["names"])).as_py() or 0))
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=256 * 1024)
    return meta


def read_kb_meta(path: str | Path) -> dict:
    schema = pq.read_schema(path)
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise ValueError(f"{path}: not a KB table written by angel-dist (no {META_KEY.decode()} metadata)")
    meta = json.loads(raw)
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: KB schema version {meta.get('schema_version')}, expected {SCHEMA_VERSION}")
    return meta


def read_kb(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    read_kb_meta(path)
    return pq.read_table(path, columns=columns)


def kb_fingerprint(path: str | Path) -> str:
    return read_kb_meta(path)["fingerprint"]


def kb_stats(path: str | Path) -> dict:
    meta = read_kb_meta(path)
    table = pq.read_table(path, columns=["names", "definitions"])
    per_concept = pc.list_value_length(table["names"]).to_numpy(zero_copy_only=False)
    defs = pc.list_value_length(table["definitions"]).to_numpy(zero_copy_only=False)
    name_lengths = pc.utf8_length(pc.list_flatten(table["names"])).to_numpy(zero_copy_only=False)
    def summary(a):
        if not len(a):
            return {"mean": 0.0, "median": 0.0, "max": 0}
        return {"mean": round(float(a.mean()), 3), "median": float(np.median(a)), "max": int(a.max())}
    return {
        "concepts": int(len(per_concept)),
        "names": int(per_concept.sum()),
        "unique_names": int(len(pc.unique(pc.list_flatten(table["names"])))),
        "definitions": int(defs.sum()),
        "concepts_with_definitions": int((defs > 0).sum()),
        "names_per_concept": summary(per_concept),
        "name_chars": summary(name_lengths),
        "format": meta.get("format"),
        "fingerprint": meta["fingerprint"],
        "build": {k: meta[k] for k in ("counts", "source") if k in meta},
    }
