"""The inputs of `angel annotate`: PubTator files, or JSONL with one text and its spans a line.

  {"id": "doc1", "text": "...", "spans": [[start, end], ...], "ids": ["D001|D002", ...]}

`id` (default: the line number) and `ids` (gold ids per span, written as PubTator writes them:
`|` and `+` separate ids, `-1` means unlinked) are optional. Both become Documents, whose
mentions the linker reads through the corpora's input function.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Literal

from angel_dist.corpus.pubtator import Document, Mention, read_pubtator
from angel_dist.decode.linker import spans_problem
from angel_dist.errors import BadInputPolicy

InputFormat = Literal["pubtator", "jsonl"]
JSONL_KEYS = ("id", "text", "spans", "ids")


def read_jsonl(path: str | Path, policy: BadInputPolicy | None = None) -> Iterator[Document]:
    policy = policy or BadInputPolicy()
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as e:
                policy.bad(path, lineno, f"expected one JSON object per line ({e})")
                continue
            problem = _record_problem(record)
            if problem:
                policy.bad(path, lineno, problem)
                continue
            text, ids = record["text"], record.get("ids") or [""] * len(record["spans"])
            yield Document(str(record.get("id", lineno)), title=text,
                           mentions=[Mention(s, e, text[s:e], "", gold, lineno)
                                     for (s, e), gold in zip(record["spans"], ids)])


def _record_problem(record) -> str | None:
    if not isinstance(record, dict):
        return f"expected a JSON object with keys {', '.join(JSONL_KEYS)}"
    unknown = sorted(set(record) - set(JSONL_KEYS))
    if unknown:
        return f"unknown key(s) {', '.join(map(repr, unknown))}; expected {', '.join(JSONL_KEYS)}"
    if "text" not in record or "spans" not in record:
        return "expected keys 'text' and 'spans'"
    problem = spans_problem(record["text"], record["spans"])
    if problem:
        return problem
    ids = record.get("ids")
    if ids is not None and not (isinstance(ids, list) and len(ids) == len(record["spans"])
                                and all(isinstance(i, str) for i in ids)):
        return "ids must be a list of strings, one per span"
    if not isinstance(record.get("id", ""), (str, int)) or isinstance(record.get("id"), bool):
        return "id must be a string or an integer"
    return None


def read_documents(path: str | Path, fmt: InputFormat, policy: BadInputPolicy) -> list[Document]:
    if fmt not in ("pubtator", "jsonl"):
        raise ValueError(f"input format must be 'pubtator' or 'jsonl', got {fmt!r}")
    return list(read_pubtator(path, policy) if fmt == "pubtator" else read_jsonl(path, policy))
