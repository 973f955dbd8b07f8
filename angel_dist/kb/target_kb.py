"""ANGEL/GenBioEL's `target_kb.json`: `{"concept id": ["name", ...], ...}`, read and written."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from angel_dist.atomic import atomic_path
from angel_dist.errors import BadInputError, BadInputPolicy
from angel_dist.kb.table import check_file_out


class _Pairs(list):
    """A JSON object as its (key, value) pairs, so that a repeated key is seen, not overwritten."""


def read_target_kb(path: str | Path, policy: BadInputPolicy) -> tuple[pa.Table, pa.Table, dict]:
    """Return (names, attributes, info) for `assemble_kb`."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"), object_pairs_hook=_Pairs)
    except json.JSONDecodeError as e:
        raise BadInputError(str(path), e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise BadInputError(str(path), None, f"undecodable bytes at byte {e.start}") from None
    except RecursionError:
        raise BadInputError(str(path), None, "JSON nested too deeply; expected an object of lists of names") from None
    if not isinstance(data, _Pairs):
        raise BadInputError(str(path), None, "expected a JSON object mapping concept ids to lists of names")
    cuis, names, concepts, seen = [], [], [], set()
    for cui, values in data:
        if cui in seen:
            policy.bad(str(path), None, f"concept {cui!r} appears more than once")
        elif not cui.strip():
            policy.bad(str(path), None, f"concept id {cui!r}: expected a non-empty id")
        elif type(values) is not list or not all(isinstance(v, str) for v in values):
            policy.bad(str(path), None, f"concept {cui!r}: expected a list of names (strings)")
        else:
            concepts.append(cui)
            cuis.extend([cui] * len(values))
            names.extend(values)
        seen.add(cui)
    info = {"format": "target-kb", "counts": {"concepts_read": len(data)}}
    return (pa.table({"cui": pa.array(cuis, pa.string()), "name": pa.array(names, pa.string())}),
            pa.table({"cui": pa.array(concepts, pa.string()),
                      "sources": pa.array([["target_kb"]] * len(concepts), pa.list_(pa.string()))}),
            info)


def write_target_kb(kb: pa.Table, path: str | Path) -> None:
    """`{cui: names}` for every concept, in table order."""
    check_file_out(path)
    mapping = dict(zip(kb["cui"].to_pylist(), kb["names"].to_pylist()))
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(mapping, f, ensure_ascii=False)
