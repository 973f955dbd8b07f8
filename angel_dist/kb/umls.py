"""UMLS Metathesaurus (RRF) to KB rows, with the ST21pv-style selection of DESIGN.md.

A concept is kept when one of its semantic types descends from a seed type and one of its
strings (in the selected languages) comes from a selected source; all its strings in those
languages are then kept. Descent is by MRSTY tree number (STN) at a dot boundary: A1.2.3
descends from A1.2, A1.22 does not. Definitions come from MRDEF, only those attached to an
atom in the selected languages.

Everything streams through pyarrow in blocks: what stays in memory are the rows of concepts
that pass the type filter, never a Python object per row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from angel_dist.errors import BadInputError, BadInputPolicy
from angel_dist.kb.rrf import find_rrf, read_rrf
from angel_dist.kb.table import distinct_lists

ST21PV_SEEDS = ("T005", "T007", "T017", "T022", "T031", "T033", "T037", "T038", "T058", "T062",
                "T074", "T082", "T091", "T092", "T097", "T098", "T103", "T168", "T170", "T201", "T204")
DEFAULT_SOURCES = ("CPT", "FMA", "GO", "HGNC", "HPO", "ICD10", "ICD10CM", "ICD9CM", "MDR", "MSH", "MTH",
                   "NCBI", "NCI", "NDDF", "NDFRT", "OMIM", "RXNORM", "SNOMEDCT_US")
# Semantic Network tree numbers of the default seeds. A release's MRSTY (or SRDEF, when
# present) takes precedence; this table only resolves seeds that no concept carries directly
# (in a subset, the parent type "Chemical" may have no concept of its own).
SEED_TREE_NUMBERS = {
    "T005": "A1.1.4", "T007": "A1.1.2", "T017": "A1.2", "T022": "A2.1.4.1", "T031": "A1.4.2",
    "T033": "A2.2", "T037": "B2.3", "T038": "B2.2.1", "T058": "B1.3.1", "T062": "B1.3.2",
    "T074": "A1.3.1", "T082": "A2.1.5", "T091": "A2.6.1", "T092": "A2.7", "T097": "A2.9.1",
    "T098": "A2.9.2", "T103": "A1.4.1", "T168": "A1.4.3", "T170": "A2.4", "T201": "A2.3.1",
    "T204": "A1.1.3",
}
SUPPRESSED = ("O", "E", "Y")
_TREE_NUMBER = re.compile(r"[AB]\d*(\.\d+)*")

RRF_COLUMNS = {
    "MRCONSO.RRF": "CUI,LAT,TS,LUI,STT,SUI,ISPREF,AUI,SAUI,SCUI,SDUI,SAB,TTY,CODE,STR,SRL,SUPPRESS,CVF".split(","),
    "MRDEF.RRF": "CUI,AUI,ATUI,SATUI,SAB,DEF,SUPPRESS,CVF".split(","),
    "MRSTY.RRF": "CUI,TUI,STN,STY,ATUI,CVF".split(","),
}


@dataclass
class UmlsConfig:
    languages: tuple[str, ...] = ("ENG",)
    seeds: tuple[str, ...] = ST21PV_SEEDS  # TUIs, or tree numbers such as "A1.2"
    sources: tuple[str, ...] = DEFAULT_SOURCES
    drop_suppressed: bool = False


def read_umls(meta_dir: str | Path, config: UmlsConfig, policy: BadInputPolicy,
              progress: bool = True) -> tuple[pa.Table, pa.Table, dict]:
    """Return (names, attributes, info) for `assemble_kb` from a META directory."""
    meta_dir = Path(meta_dir)
    if not meta_dir.is_dir():
        raise FileNotFoundError(f"{meta_dir}: not a directory (expected a UMLS META directory)")
    columns = _columns(meta_dir)
    paths = {}
    for name in ("MRCONSO.RRF", "MRSTY.RRF"):
        paths[name] = find_rrf(meta_dir, name)
        if paths[name] is None:
            raise FileNotFoundError(f"{meta_dir}: no {name} (or {name}.gz)")
    mrdef = find_rrf(meta_dir, "MRDEF.RRF")

    def read(name, path, keep):
        return read_rrf(path, columns[name], keep, policy, progress=progress)

    sty = _concat(read("MRSTY.RRF", paths["MRSTY.RRF"], ["CUI", "TUI", "STN"]),
                  ["CUI", "TUI", "STN"])
    seed_stns = _seed_tree_numbers(config.seeds, sty, meta_dir)
    stn = sty["STN"]
    descends = pc.or_(pc.is_in(stn, value_set=pa.array(seed_stns)),
                      pc.starts_with(stn, seed_stns[0] + "."))
    for s in seed_stns[1:]:
        descends = pc.or_(descends, pc.starts_with(stn, s + "."))
    typed_cuis = pc.unique(sty["CUI"].filter(descends))

    languages = pa.array(config.languages)
    rows, language_auis, row_base = [], [], 0
    for batch in read("MRCONSO.RRF", paths["MRCONSO.RRF"],
                      ["CUI", "LAT", "TS", "STT", "ISPREF", "AUI", "SAB", "STR", "SUPPRESS"]):
        index = pa.array(np.arange(row_base, row_base + batch.num_rows))
        row_base += batch.num_rows
        keep = pc.and_(pc.is_in(batch["CUI"], value_set=typed_cuis),
                       pc.is_in(batch["LAT"], value_set=languages))
        batch = batch.append_column("row", index).filter(keep)
        language_auis.append(batch["AUI"])
        if config.drop_suppressed:
            batch = batch.filter(pc.invert(pc.is_in(batch["SUPPRESS"], value_set=pa.array(SUPPRESSED))))
        preferred = pc.and_(pc.and_(pc.equal(batch["TS"], "P"), pc.equal(batch["STT"], "PF")),
                            pc.equal(batch["ISPREF"], "Y"))
        rows.append(pa.table({"cui": batch["CUI"], "name": batch["STR"], "sab": batch["SAB"],
                              "preferred": preferred, "row": batch["row"]}))
    strings = _concat(rows, ["cui", "name", "sab", "preferred", "row"], [pa.string()] * 3 + [pa.bool_(), pa.int64()])
    sourced = pc.unique(strings["cui"].filter(pc.is_in(strings["sab"], value_set=pa.array(config.sources))))
    strings = strings.filter(pc.is_in(strings["cui"], value_set=sourced))
    # Concepts by CUI; within one, the preferred name first, then file order.
    strings = strings.sort_by([("cui", "ascending"), ("preferred", "descending"), ("row", "ascending")])

    types = sty.filter(pc.is_in(sty["CUI"], value_set=sourced))
    attributes = _lists(types.rename_columns(["cui", "types", "_"]).select(["cui", "types"]))
    sources = _lists(strings.select(["cui", "sab"]).rename_columns(["cui", "sources"]))
    attributes = _merge(attributes, sources)
    n_definitions = 0
    if mrdef is not None:
        auis = pa.chunked_array(language_auis, pa.string()).combine_chunks()
        kept = []
        for batch in read("MRDEF.RRF", mrdef, ["CUI", "AUI", "DEF", "SUPPRESS"]):
            keep = pc.and_(pc.is_in(batch["CUI"], value_set=sourced), pc.is_in(batch["AUI"], value_set=auis))
            if config.drop_suppressed:
                keep = pc.and_(keep, pc.invert(pc.is_in(batch["SUPPRESS"], value_set=pa.array(SUPPRESSED))))
            batch = batch.filter(keep)
            kept.append(pa.table({"cui": batch["CUI"], "definitions": pc.utf8_trim_whitespace(batch["DEF"])}))
        definitions = _concat(kept, ["cui", "definitions"])
        definitions = definitions.filter(pc.greater(pc.utf8_length(definitions["definitions"]), 0))
        n_definitions = definitions.num_rows
        attributes = _merge(attributes, _lists(definitions))

    info = {
        "format": "umls",
        "source": str(meta_dir),
        "config": {"languages": list(config.languages), "seeds": list(config.seeds),
                   "seed_tree_numbers": seed_stns, "sources": list(config.sources),
                   "drop_suppressed": config.drop_suppressed},
        # Named by the empty-KB error: an empty MRCONSO or MRSTY selects nothing.
        "empty_files": [str(paths[name]) for name, rows in (("MRCONSO.RRF", row_base), ("MRSTY.RRF", sty.num_rows))
                        if rows == 0],
        "counts": {"mrconso_rows": row_base, "mrsty_rows": sty.num_rows,
                   "concepts_type_selected": len(typed_cuis), "concepts_selected": len(sourced),
                   "strings_selected": strings.num_rows, "definition_rows_kept": n_definitions},
    }
    return strings.select(["cui", "name"]), attributes, info


def _columns(meta_dir: Path) -> dict[str, list[str]]:
    """Column layouts from MRFILES.RRF when the release has it, else the standard ones."""
    columns = dict(RRF_COLUMNS)
    mrfiles = find_rrf(meta_dir, "MRFILES.RRF")
    if mrfiles is not None:
        policy = BadInputPolicy("error")
        for table in read_rrf(mrfiles, "FIL,DES,FMT,CLS,RWS,BTS".split(","), ["FIL", "FMT"], policy, progress=False):
            for fil, fmt in zip(table["FIL"].to_pylist(), table["FMT"].to_pylist()):
                if fil in columns:
                    columns[fil] = fmt.split(",")
    for name, needed in (("MRCONSO.RRF", ["CUI", "LAT", "TS", "STT", "ISPREF", "AUI", "SAB", "STR", "SUPPRESS"]),
                         ("MRDEF.RRF", ["CUI", "AUI", "DEF", "SUPPRESS"]), ("MRSTY.RRF", ["CUI", "TUI", "STN"])):
        missing = sorted(set(needed) - set(columns[name]))
        if missing:
            raise BadInputError(str(mrfiles), None, f"{name} lacks the columns {missing}")
    return columns


def _seed_tree_numbers(seeds, sty: pa.Table, meta_dir: Path) -> list[str]:
    known = dict(SEED_TREE_NUMBERS)
    srdef = next((p for p in (meta_dir / "SRDEF", meta_dir.parent / "NET" / "SRDEF") if p.exists()), None)
    if srdef is not None:
        for line in srdef.read_text(encoding="utf-8").splitlines():
            fields = line.split("|")
            if len(fields) > 3 and fields[0] == "STY":
                known[fields[1]] = fields[3]
    pairs = sty.select(["TUI", "STN"]).group_by(["TUI", "STN"]).aggregate([])
    known.update(zip(pairs["TUI"].to_pylist(), pairs["STN"].to_pylist()))
    resolved = []
    for seed in seeds:
        if _TREE_NUMBER.fullmatch(seed):
            resolved.append(seed)
        elif seed in known:
            resolved.append(known[seed])
        else:
            raise ValueError(f"seed semantic type {seed!r}: no tree number in MRSTY, SRDEF or the "
                             f"built-in table; give its tree number (e.g. A1.2) instead")
    return resolved


def _concat(tables, names, types=None) -> pa.Table:
    tables = [t.select(names) for t in tables]
    if not tables:
        return pa.schema(list(zip(names, types or [pa.string()] * len(names)))).empty_table()
    return pa.concat_tables(tables).combine_chunks()


def _lists(table: pa.Table) -> pa.Table:
    """(cui, value) rows to one row per cui with the distinct values in first-seen order."""
    cui, value = table.column_names
    keys, lists = distinct_lists(table[cui], table[value])
    return pa.table({cui: keys, value: lists})


def _merge(left: pa.Table, right: pa.Table) -> pa.Table:
    """Outer-merge two one-row-per-cui tables of list columns."""
    cuis = pc.unique(pa.chunked_array(left["cui"].chunks + right["cui"].chunks, pa.string()))
    columns = {"cui": cuis}
    for table in (left, right):
        taken = table.take(pc.index_in(cuis, value_set=table["cui"]))
        for name in table.column_names[1:]:
            columns[name] = taken[name]
    return pa.table(columns)
