"""Sentence spans for mention context windows: rule-based, no model to download.

A boundary is a `.`, `?` or `!` (optionally closed by a quote or bracket) followed by
whitespace and an upper-case letter, a digit or an opening bracket, unless the word before
it is a common abbreviation or a single letter (initials, "e.g.", "vs.", "et al.", "Fig.").
A title and its abstract are always separate sentences.
"""

from __future__ import annotations

import re

_BOUNDARY = re.compile(r"""[.?!]['")\]]*(?=\s+['"(\[]?[A-Z0-9])""")
_ABBREVIATIONS = {"e.g", "i.e", "vs", "al", "fig", "figs", "dr", "mr", "mrs", "ms", "no", "approx", "ca", "cf",
                  "st", "ref", "refs", "eq", "vol", "resp", "sp", "spp", "inc", "ltd", "jr", "sr", "viz", "etc"}


def sentence_spans(text: str, hard_breaks: tuple[int, ...] = ()) -> list[tuple[int, int]]:
    """Half-open character spans covering `text`, stripped of surrounding whitespace.

    `hard_breaks` are offsets where a sentence always ends (the end of a title)."""
    cuts = set(b for b in hard_breaks if 0 < b < len(text))
    for m in _BOUNDARY.finditer(text):
        word = text[:m.start()].rsplit(None, 1)[-1] if text[:m.start()].strip() else ""
        word = word.lstrip("([\"'").lower()
        if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
            continue
        cuts.add(m.end())
    spans, start = [], 0
    for cut in sorted(cuts) + [len(text)]:
        lo, hi = start, cut
        while lo < hi and text[lo].isspace():
            lo += 1
        while hi > lo and text[hi - 1].isspace():
            hi -= 1
        if hi > lo:
            spans.append((lo, hi))
        start = cut
    return spans


def window(spans: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """The span of the sentence(s) holding [start, end): a mention across a boundary joins both."""
    lo = next((s for s, e in spans if s <= start < e), start)
    hi = next((e for s, e in reversed(spans) if s < end <= e), end)
    return min(lo, start), max(hi, end)
