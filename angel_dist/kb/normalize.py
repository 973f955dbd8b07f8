"""Name normalization of GenBioEL/ANGEL, vectorized over Arrow arrays.

Lowercase; each of ``,.;{}[]()+-_*/?!`"'=%><`` becomes a space; runs of whitespace
collapse to one space and the ends are trimmed. The scalar form goes through the same
Arrow kernels so that there is exactly one definition of a normalized name. It equals
GenBioEL's Python `str.lower` formulation except where Python lowercases one code point to
two (U+0130 "İ" becomes "i" here, "i̇" there).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

PUNCTUATION = ",.;{}[]()+-_*/?!`\"'=%></"
_PUNCT_CLASS = "[" + "".join("\\" + c if c in "[]\\-^" else c for c in sorted(set(PUNCTUATION))) + "]"


def normalize_names(names: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Normalize every string of an Arrow string array (nulls stay null)."""
    lowered = pc.utf8_lower(names)
    spaced = pc.replace_substring_regex(lowered, _PUNCT_CLASS, " ")
    return pc.binary_join(pc.utf8_split_whitespace(pc.utf8_trim_whitespace(spaced)), " ")


def normalize_name(name: str) -> str:
    return normalize_names(pa.array([name], pa.string()))[0].as_py()
