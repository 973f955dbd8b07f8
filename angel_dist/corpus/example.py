"""One training or evaluation example before tokenization (the text side of a shard sample)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

START, END = "START", "END"
Keep = Literal["head", "tail", "around"]


@dataclass
class Example:
    key: str  # unique in the shard set; a valid WebDataset key
    group: str  # what the shard is chosen by: examples of one concept / mention stay together
    source: str  # encoder input with START mention END
    prefix: str  # "<mention> is", forced at decoding time
    target: str  # a KB name; empty for evaluation-only examples
    cuis: list[str]  # gold concept ids
    kind: Literal["kb", "mention"]
    mention_span: tuple[int, int]  # character span of the mention inside `source`
    keep: Keep = "head"  # which end of an over-long source survives truncation
    meta: dict = field(default_factory=dict)  # template, form, document, offsets...


def mark(left: str, mention: str, right: str) -> tuple[str, tuple[int, int]]:
    """`left START mention END right` with single spaces, and the mention's span in it."""
    head = f"{left} {START} " if left else f"{START} "
    text = f"{head}{mention} {END}" + (f" {right}" if right else "")
    return text, (len(head), len(head) + len(mention))


def unmark(text: str) -> tuple[str, tuple[int, int]]:
    """`left START mention END right` -> ("left mention right", the mention's span): a text
    marked by hand (`angel link`) as a document and its one mention."""
    words = text.split()
    if words.count(START) != 1 or words.count(END) != 1 or words.index(START) > words.index(END) - 2:
        raise ValueError(f"mark exactly one mention as '... {START} mention {END} ...', got {text!r}")
    i, j = words.index(START), words.index(END)
    left, mention, right = " ".join(words[:i]), " ".join(words[i + 1:j]), " ".join(words[j + 1:])
    start = len(left) + 1 if left else 0
    plain = " ".join(w for w in (left, mention, right) if w)
    return plain, (start, start + len(mention))
