"""CTD MEDIC in the flat form BioSyn, GenBioEL and ANGEL use: `ID[|ID...]||Name|Synonym|...`.

The first id is the concept, the others its alternative ids. MEDIC ids carry no prefix
(`D012711`, `C565588`, as NCBI-disease's gold ids); bare numbers are OMIM ids and become
`OMIM:n`; a `MESH:` prefix is dropped so that ids match the benchmarks' gold ids.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from angel_dist.errors import BadInputPolicy


def medic_id(raw: str) -> str:
    raw = raw.strip()
    if raw.isdigit():
        return f"OMIM:{raw}"
    return raw[len("MESH:"):] if raw.startswith("MESH:") else raw


def read_medic(path: str | Path, policy: BadInputPolicy) -> tuple[pa.Table, pa.Table, dict]:
    """Return (names, attributes, info) for `assemble_kb`."""
    cuis, names, attr_cui, alt_ids = [], [], [], []
    first_line: dict[str, int] = {}
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                policy.bad(str(path), number, f"undecodable bytes ({e.reason} at byte {e.start})")
                continue
            if not line.strip() or line.startswith("#"):
                continue
            ids, sep, rest = line.partition("||")
            ids = [medic_id(i) for i in ids.split("|")]
            if not sep or not all(ids):
                policy.bad(str(path), number, "expected 'ID[|ID...]||Name[|Synonym...]'")
                continue
            if ids[0] in first_line:
                policy.bad(str(path), number, f"concept {ids[0]} is already defined at line {first_line[ids[0]]}")
                continue
            first_line[ids[0]] = number
            attr_cui.append(ids[0])
            alt_ids.append(ids[1:])
            for name in rest.split("|"):
                cuis.append(ids[0])
                names.append(name)
    info = {"format": "medic", "counts": {"lines_read": len(attr_cui)}}
    attributes = pa.table({"cui": pa.array(attr_cui, pa.string()),
                           "alt_ids": pa.array(alt_ids, pa.list_(pa.string())),
                           "sources": pa.array([["MEDIC"]] * len(attr_cui), pa.list_(pa.string()))})
    return pa.table({"cui": pa.array(cuis, pa.string()), "name": pa.array(names, pa.string())}), attributes, info
