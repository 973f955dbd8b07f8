"""OBO 1.2/1.4 ontologies (HPO, Disease Ontology) to KB rows.

Each non-obsolete [Term] gives a concept: its `name` first, then its synonyms of the chosen
scopes, in file order; `def` as definition; `alt_id`s as alternative ids; `xref` ids; the
`namespace` as type; the id prefix (HP, DOID) as source. OBO files are at most a few hundred
MB, so this is a line-by-line Python parser.

Bad input, named by line: a clause that cannot be read (skip mode drops the line), among them
quoted text followed by anything but its scope, `[dbxrefs]`, `{modifiers}` and a `! comment`
(so a missing or unescaped quote never yields a truncated definition); an unknown stanza; a
term that cannot be trusted (two `id:` or `name:` lines, an id defined before, no id), which
skip mode drops whole.
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
    """A clause that cannot be read: the line is skipped."""


class _BadTerm(ValueError):
    """A term that cannot be trusted (two ids, two names, an id seen before): the term is skipped."""


STANZAS = ("[Term]", "[Typedef]", "[Instance]")


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


def _closing(text: str, closer: str) -> int:
    """Index of the `closer` that ends the bracket opening `text`, skipping escapes and quoted parts."""
    i, quoted = 1, False
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 1
        elif c == '"':
            quoted = not quoted
        elif c == closer and not quoted:
            return i
        i += 1
    raise _Malformed(f"{text[0]} without its closing {closer}")


def _tail(rest: str) -> None:
    """What may follow a quoted value and its scope: [dbxrefs], {modifiers}, ! comment. Anything else
    means the quoted text ended early (an unescaped or missing quote), so the clause is refused
    rather than kept truncated."""
    for opener, closer in (("[", "]"), ("{", "}")):
        if rest.startswith(opener):
            rest = rest[_closing(rest, closer) + 1:].lstrip()
    if rest and not rest.startswith("!"):
        raise _Malformed(f"unexpected {rest[:30]!r} after the quoted text (a quote missing or unescaped?)")


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
        self.rejected = False


def read_obo(path: str | Path, config: OboConfig, policy: BadInputPolicy) -> tuple[pa.Table, pa.Table, dict]:
    """Return (names, attributes, info) for `assemble_kb`."""
    terms: list[_Term] = []
    counts = {"term_stanzas": 0, "terms": 0, "obsolete_skipped": 0, "terms_skipped": 0,
              "synonyms_by_scope": dict.fromkeys(SCOPES, 0)}
    ids: dict[str, int] = {}  # id -> line of its first definition
    term = None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                policy.bad(str(path), number, f"undecodable bytes ({e.reason} at byte {e.start})")
                continue
            if line.startswith("["):
                term = None
                if line == "[Term]":
                    term = _Term(number)
                    terms.append(term)
                    counts["term_stanzas"] += 1
                elif line not in STANZAS:
                    policy.bad(str(path), number, f"expected a stanza header ({', '.join(STANZAS)}), got {line[:40]!r}")
                continue
            if term is None or term.rejected or not line or line.startswith("!"):
                continue
            tag, sep, value = line.partition(":")
            if not sep:
                policy.bad(str(path), number, "expected a 'tag: value' line")
                continue
            try:
                _apply(term, tag.strip(), value.strip(), config, counts, ids, number)
            except (_Malformed, _BadTerm) as e:
                policy.bad(str(path), number, f"{tag.strip()}: {e}")
                term.rejected = isinstance(e, _BadTerm)

    names_cui, names, attributes = [], [], {k: [] for k in ("cui", "definitions", "types", "sources",
                                                           "alt_ids", "xrefs")}
    for term in terms:
        if term.id is None and not term.rejected:
            policy.bad(str(path), term.line, "[Term] without an id")
            term.rejected = True
        if term.rejected:
            counts["terms_skipped"] += 1
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


def _apply(term: _Term, tag: str, value: str, config: OboConfig, counts: dict, ids: dict, line: int) -> None:
    if tag == "id":
        if term.id is not None:
            raise _BadTerm(f"a second id in the [Term] of line {term.line} (it has {term.id})")
        term.id = _plain(value)
        if not term.id:
            raise _BadTerm("expected an id")
        if term.id in ids:
            raise _BadTerm(f"id {term.id} is already defined at line {ids[term.id]}")
        ids[term.id] = line
    elif tag == "name":
        if term.name is not None:
            raise _BadTerm(f"a second name in the [Term] of line {term.line}")
        term.name = _plain(value)
    elif tag == "synonym":
        text, rest = _quoted(value)
        scope, rest = (rest.split(maxsplit=1) + ["", ""])[:2]
        if scope not in SCOPES:
            raise _Malformed(f"expected a scope ({', '.join(SCOPES)}) after the quoted text, found {scope!r}")
        if rest and rest[0] not in "[{!":  # a synonym type
            rest = (rest.split(maxsplit=1) + [""])[1]
        _tail(rest)
        counts["synonyms_by_scope"][scope] += 1
        if scope in config.synonym_scopes:
            term.synonyms.append(text)
    elif tag == "def":
        text, rest = _quoted(value)
        _tail(rest)
        term.definitions.append(text)
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
