"""PubTator files (NCBI-disease, BC5CDR, MedMentions): documents and their annotated mentions.

  PMID|t|title
  PMID|a|abstract
  PMID<TAB>start<TAB>end<TAB>mention<TAB>type<TAB>ids[<TAB>parts]    offsets into title + " " + abstract
  PMID<TAB>CID<TAB>chemical<TAB>disease                             BC5CDR relation line (ignored)

Documents are separated by blank lines. Bad input: a line that fits none of these, a mention
whose offsets fall outside the text, are inverted, or do not match the text (beyond surrounding
spaces), an annotation of an unknown document, a document id seen before with other content (its
block is skipped whole in skip mode: example keys derive from the id).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from angel_dist.errors import BadInputPolicy


@dataclass
class Mention:
    start: int
    end: int
    text: str
    type: str
    ids: str  # as written: "D001|D002", "-1", "UMLS:C0010674"
    line: int
    parts: str = ""  # BC5CDR's 7th column: a composite's individual mentions, "a|b"


@dataclass
class Document:
    pmid: str
    title: str = ""
    abstract: str = ""
    mentions: list[Mention] = field(default_factory=list)

    @property
    def text(self) -> str:
        return f"{self.title} {self.abstract}" if self.abstract else self.title


def read_pubtator(path: str | Path, policy: BadInputPolicy | None = None,
                  counts: Counter | None = None) -> Iterator[Document]:
    """The documents of a PubTator file, in file order. A document repeated with the same title,
    abstract and annotations (NCBI-disease's train set holds one) is dropped and counted in
    `counts["repeated_documents_dropped"]`; repeated with other content, it is bad input."""
    policy = policy or BadInputPolicy()
    counts = Counter() if counts is None else counts
    path = str(path)
    doc: Document | None = None
    pending: list[Mention] = []
    seen: dict[str, tuple[int, str]] = {}  # document id -> (line of its title/abstract, content digest)
    sections: set[str] = set()  # the current document's 't' and 'a' lines seen

    def finish():
        first = seen.get(doc.pmid)
        digest = _digest(doc, pending)
        if first is not None:  # a repeat: never two documents under one id (their example keys would collide)
            if first[1] == digest:
                counts["repeated_documents_dropped"] += 1
            else:
                policy.bad(path, doc_line, f"document {doc.pmid} appears again with other content "
                                           f"(first at line {first[0]})")
            return None
        seen[doc.pmid] = (doc_line, digest)
        text = doc.text
        for m in pending:
            if not 0 <= m.start < m.end <= len(text):
                policy.bad(path, m.line, f"mention offsets {m.start}:{m.end}: expected 0 <= start < end <= "
                                         f"{len(text)} (the length of title + ' ' + abstract)")
                continue
            # NCBI-disease's train set pads a few mention fields with spaces the text lacks.
            if text[m.start:m.end] != m.text and text[m.start:m.end].strip() == m.text.strip():
                m.text = text[m.start:m.end]
            if text[m.start:m.end] != m.text:
                policy.bad(path, m.line, f"mention {m.text!r} does not match the text at {m.start}:{m.end} "
                                         f"({text[m.start:m.end]!r})")
                continue
            doc.mentions.append(m)
        return doc

    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                policy.bad(path, lineno, f"not UTF-8 ({e.reason} at byte {e.start})")
                continue
            if not line.strip():
                if doc is not None and (done := finish()) is not None:
                    yield done
                doc, pending = None, []
                continue
            head = line.split("|", 2)
            if len(head) == 3 and head[1] in ("t", "a") and "\t" not in head[0]:
                pmid, section, text = head
                if doc is not None and doc.pmid != pmid:
                    if (done := finish()) is not None:
                        yield done
                    doc, pending = None, []
                if doc is None:
                    if not pmid.strip():
                        policy.bad(path, lineno, "expected a document id before '|t|' or '|a|'")
                        continue
                    doc, doc_line, sections = Document(pmid), lineno, set()
                if section in sections:
                    policy.bad(path, lineno, f"a second '|{section}|' line for document {pmid}")
                    continue
                sections.add(section)
                if section == "t":
                    doc.title = text
                else:
                    doc.abstract = text
                continue
            fields = line.split("\t")
            if len(fields) == 4 and doc is not None and fields[0] == doc.pmid:
                continue  # relation line
            if len(fields) not in (6, 7):
                policy.bad(path, lineno, f"expected 'PMID|t|', 'PMID|a|' or 6-7 tab-separated fields, got {len(fields)}")
                continue
            if doc is None or fields[0] != doc.pmid:
                policy.bad(path, lineno, f"annotation of document {fields[0]!r} outside its title/abstract block")
                continue
            try:
                start, end = int(fields[1]), int(fields[2])
            except ValueError:
                policy.bad(path, lineno, f"offsets must be integers, got {fields[1]!r}, {fields[2]!r}")
                continue
            pending.append(Mention(start, end, fields[3], fields[4], fields[5], lineno,
                                   fields[6] if len(fields) == 7 else ""))
    if doc is not None and (done := finish()) is not None:
        yield done


def _digest(doc: Document, mentions: list[Mention]) -> str:
    """What a repeat must match to be the same document: its text and annotations."""
    content = [doc.title, doc.abstract] + [[m.start, m.end, m.text, m.type, m.ids] for m in mentions]
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()


def format_pubtator(doc: Document) -> str:
    """One document as PubTator lines (title, abstract, a line per mention), blank-line terminated."""
    lines = [f"{doc.pmid}|t|{doc.title}", f"{doc.pmid}|a|{doc.abstract}"]
    lines += [f"{doc.pmid}\t{m.start}\t{m.end}\t{m.text}\t{m.type}\t{m.ids}" + (f"\t{m.parts}" if m.parts else "")
              for m in doc.mentions]
    return "\n".join(lines) + "\n\n"
