"""OBO 1.2/1.4 ontologies (HPO, Disease Ontology) to KB rows.

Each non-obsolete [Term] gives a concept: its `name` first, then its synonyms of the chosen
scopes, in file order; `def` as definition; `alt_id`s as alternative ids; `xref` ids; the
`namespace` as type; the id prefix (HP, DOID) as source. OBO files are at most a few hundred
MB, so this is a line-by-line Python parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from angel_dist.errors import BadInputPolicy

SCOPES = ("EXACT", "BROAD", "NARROW", "RELATED")
_ESCAPES = {"n": "\n", "t": "\t", "W": " "}


@dataclass
class OboConfig:
    synonym_scopes: tuple[str, ...] = ("EXACT", "RELATED")
    include_obsolete: bool = False

    def __post_init__(self):
        unknown = sorted(set(self.synonym_scopes) - set(SCOPES))
        if unknown:
            raise ValueError(f"unknown synonym scope(s) {unknown}; expected some of {', '.join(SCOPES)}")


class _Malformed(ValueError):
    pass


def _scan(value: str, start: int, stops: str) -> tuple[str, int]:
    """Unescape `value` from `start` up to the first unescaped character in `stops`."""
    out, i = [], start
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            out.append(_ESCAPES.get(value[i + 1], value[i + 1]))
            i += 2
        elif c in stops:
            break
        else:
            out.append(c)
            i += 1
    return "".join(out), i


def _quoted(value: str) -> tuple[str, str]:
    """Split `"text" rest` into (unescaped text, rest)."""
    if not value.startswith('"'):
        raise _Malformed("expected a quoted string")
    text, end = _scan(value, 1, '"')
    if end == len(value):
        raise _Malformed("unterminated quoted string")
    return text, value[end + 1:].strip()


def _plain(value: str) -> str:
    """An unquoted value without its `! comment` and trailing `{modifiers}`, unescaped."""
    return _scan(value, 0, "!{" if value.rstrip().endswith("}") else "!")[0].strip()


class _Term:
    def __init__(self, line: int):
        self.line = line
        self.id = None
        self.name = None
        self.synonyms: list[str] = []
        self.definitions: list[str] = []
        self.namespaces: list[str] = []
        self.alt_ids: list[str] = []
        self.xrefs: list[str] = []
        self.obsolete = False


def read_obo(path: str | Path, config: OboConfig, policy: BadInputPolicy) -> tuple[pa.Table, pa.Table, dict]:
    """Return (names, attributes, info) for `assemble_kb`."""
    terms: list[_Term] = []
    counts = {"terms": 0, "obsolete_skipped": 0, "synonyms_by_scope": dict.fromkeys(SCOPES, 0)}
    term = None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                policy.bad(str(path), number, f"undecodable bytes ({e.reason} at byte {e.start})")
                continue
            if line.startswith("["):
                term = _Term(number) if line == "[Term]" else None
                if term is not None:
                    terms.append(term)
                continue
            if term is None or not line or line.startswith("!"):
                continue
            tag, sep, value = line.partition(":")
            if not sep:
                policy.bad(str(path), number, "expected a 'tag: value' line")
                continue
            try:
                _apply(term, tag.strip(), value.strip(), config, counts)
            except _Malformed as e:
                policy.bad(str(path), number, f"{tag.strip()}: {e}")

    names_cui, names, attributes = [], [], {k: [] for k in ("cui", "definitions", "types", "sources",
                                                           "alt_ids", "xrefs")}
    for term in terms:
        if term.id is None:
            policy.bad(str(path), term.line, "[Term] without an id")
            continue
        if term.obsolete and not config.include_obsolete:
            counts["obsolete_skipped"] += 1
            continue
        counts["terms"] += 1
        for name in ([term.name] if term.name is not None else []) + term.synonyms:
            names_cui.append(term.id)
            names.append(name)
        for key, value in (("cui", term.id), ("definitions", term.definitions), ("types", term.namespaces),
                           ("sources", [term.id.split(":", 1)[0]]), ("alt_ids", term.alt_ids),
                           ("xrefs", term.xrefs)):
            attributes[key].append(value)
    info = {"format": "obo", "counts": counts,
            "config": {"synonym_scopes": list(config.synonym_scopes), "include_obsolete": config.include_obsolete}}
    return (pa.table({"cui": pa.array(names_cui, pa.string()), "name": pa.array(names, pa.string())}),
            pa.table(attributes, schema=pa.schema([("cui", pa.string())] + [
                (k, pa.list_(pa.string())) for k in ("definitions", "types", "sources", "alt_ids", "xrefs")])),
            info)


def _apply(term: _Term, tag: str, value: str, config: OboConfig, counts: dict) -> None:
    if tag == "id":
        term.id = _plain(value)
    elif tag == "name":
        term.name = _plain(value)
    elif tag == "synonym":
        text, rest = _quoted(value)
        scope = rest.split(maxsplit=1)[0] if rest else ""
        if scope not in SCOPES:
            raise _Malformed(f"expected a scope ({', '.join(SCOPES)}) after the quoted text, found {scope!r}")
        counts["synonyms_by_scope"][scope] += 1
        if scope in config.synonym_scopes:
            term.synonyms.append(text)
    elif tag == "def":
        term.definitions.append(_quoted(value)[0])
    elif tag == "namespace":
        term.namespaces.append(_plain(value))
    elif tag == "alt_id":
        term.alt_ids.append(_plain(value))
    elif tag == "xref":
        xref = _plain(value).split(maxsplit=1)
        if xref:
            term.xrefs.append(xref[0])
    elif tag == "is_obsolete":
        term.obsolete = _plain(value) == "true"
