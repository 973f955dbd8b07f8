"""Abbreviations a document defines, and mentions written with their long forms.

GenBioEL expands abbreviated mentions with Ab3P (a C++ tool) before linking them, so that
`FED` in a text that introduced "fish-eye disease (FED)" is linked as "fish-eye disease". We
find the pairs with the Schwartz–Hearst algorithm ("long form (SF)" and "SF (long form)"
within a sentence) as the `abbreviation-extractor` package implements it, and replace every
whole-word occurrence of a short form in a mention with its long form (BioSyn's rule, which
GenBioEL's NCBI data went through; a mention that is a short form is the whole-word case).
"""

from __future__ import annotations

import re

from abbreviation_extractor import extract_abbreviation_definition_pairs


def document_abbreviations(text: str) -> dict[str, str]:
    """Short form -> long form (the first definition of each) of the pairs `text` introduces."""
    if "(" not in text:  # both of the algorithm's patterns need a parenthesis
        return {}
    pairs = extract_abbreviation_definition_pairs(text, first_definition=True, ignore_errors=True)
    return {p.abbreviation: " ".join(p.definition.split()) for p in pairs}


def expand(mention: str, abbreviations: dict[str, str]) -> str:
    """`mention` with each whole-word short form of `abbreviations` replaced by its long form,
    unless the mention also holds that long form."""
    if not abbreviations:
        return mention
    # A mention holding the long form is the definition itself ("long form (SF) deficiency").
    lowered = mention.lower()
    found = [a for a in abbreviations if a in mention and abbreviations[a].lower() not in lowered]
    if not found:
        return mention
    # Longest first, so that a short form inside a longer one ("IL" in "IL-2R") is not taken first.
    pattern = "|".join(re.escape(a) for a in sorted(found, key=len, reverse=True))
    return re.sub(rf"(?<!\w)(?:{pattern})(?!\w)", lambda m: abbreviations[m.group(0)], mention)
