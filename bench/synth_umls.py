"""Write a synthetic UMLS Metathesaurus release: MRCONSO, MRDEF, MRSTY and MRFILES (RRF).

    python bench/synth_umls.py OUT_DIR --concepts 2500000     # about 10M MRCONSO rows

Input for benchmarking the KB builder at UMLS scale. The shape follows a real release: rows
sorted by CUI, one preferred English name per concept (TS=P, STT=PF, ISPREF=Y), about 15% of
rows in other languages, synonyms that share words (and, after lowercasing and punctuation
stripping, sometimes the whole string) with their concept's other names, names drawn from a
Zipf-like vocabulary, about 10% of concepts named only by sources outside the usual
whitelist, about 15% typed only outside the ST21pv semantic-type seeds, and ~3% suppressed
rows. The same arguments give byte-identical files. Only the standard library and numpy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import ExitStack
from gzip import GzipFile
from pathlib import Path
from typing import NamedTuple

import numpy as np

BLOCK_CONCEPTS = 50_000
MAX_NAMES_PER_CONCEPT = 40
MAX_NAME_WORDS = 12
N_PSEUDO_WORDS = 100_000
ZIPF_EXPONENT = 1.05
MAX_CONCEPTS = 9_999_999  # CUIs are C + 7 digits

FOREIGN_ROW_SHARE = 0.15
SUPPRESSED_ROW_SHARE = 0.03
UNLISTED_ONLY_CONCEPT_SHARE = 0.10
DEFINED_CONCEPT_SHARE = 0.30
FOREIGN_DEFINITION_SHARE = 0.10
TWO_TYPES_SHARE = 0.20

COLUMNS = {
    "MRCONSO.RRF": ("Concept names and sources",
                    "CUI,LAT,TS,LUI,STT,SUI,ISPREF,AUI,SAUI,SCUI,SDUI,SAB,TTY,CODE,STR,SRL,SUPPRESS,CVF"),
    "MRDEF.RRF": ("Definitions", "CUI,AUI,ATUI,SATUI,SAB,DEF,SUPPRESS,CVF"),
    "MRSTY.RRF": ("Semantic Types", "CUI,TUI,STN,STY,ATUI,CVF"),
}


class Source(NamedTuple):
    sab: str
    lat: str
    weight: float  # relative frequency among the rows of its language
    listed: bool  # in the KB builder's default source whitelist
    ttys: tuple[str, ...]  # the first is the one a preferred name gets
    ids: str  # SAUI|SCUI|SDUI|SAB|TTY|CODE; {0} is the concept's code in the source, {1} the atom number


_MSH_IDS = "|M{0:07d}|D{0:06d}|{sab}|{tty}|D{0:06d}"
_SCT_IDS = "{1}016|{0}||{sab}|{tty}|{0}"
_MDR_IDS = "|||{sab}|{tty}|{0:08d}"
SOURCES = (
    Source("MSH", "ENG", 14, True, ("MH", "ET", "PM", "PEP"), _MSH_IDS),
    Source("SNOMEDCT_US", "ENG", 20, True, ("PT", "FN", "SY"), _SCT_IDS),
    Source("NCI", "ENG", 12, True, ("PT", "SY", "AB"), "||C{0}|{sab}|{tty}|C{0}"),
    Source("MTH", "ENG", 5, True, ("PN",), "|||{sab}|{tty}|NOCODE"),
    Source("MDR", "ENG", 8, True, ("PT", "LLT"), _MDR_IDS),
    Source("ICD10CM", "ENG", 3, True, ("PT", "AB"), "|||{sab}|{tty}|R{0:07d}"),
    Source("RXNORM", "ENG", 8, True, ("IN", "SCD", "SBD", "BN"), "{1}|{0}||{sab}|{tty}|{0}"),
    Source("FMA", "ENG", 5, True, ("PT", "SY"), "|{0}||{sab}|{tty}|{0}"),
    Source("GO", "ENG", 3, True, ("PT", "SY"), "|GO:{0:07d}||{sab}|{tty}|GO:{0:07d}"),
    Source("HPO", "ENG", 2, True, ("PT", "SY"), "|HP:{0:07d}||{sab}|{tty}|HP:{0:07d}"),
    Source("OMIM", "ENG", 3, True, ("PT", "ETAL"), "|||{sab}|{tty}|{0}"),
    Source("LNC", "ENG", 8, False, ("LN", "LC", "CN"), "|||{sab}|{tty}|LP{0}"),
    Source("MEDLINEPLUS", "ENG", 2, False, ("PT", "SY"), "|||{sab}|{tty}|T{0}"),
    Source("CHV", "ENG", 7, False, ("PT", "SY"), "|||{sab}|{tty}|{0:010d}"),
    Source("MSHFRE", "FRE", 7, False, ("MH", "ET"), _MSH_IDS),
    Source("MDRFRE", "FRE", 3, False, ("PT", "LLT"), _MDR_IDS),
    Source("MSHSPA", "SPA", 4, False, ("MH", "ET"), _MSH_IDS),
    Source("SCTSPA", "SPA", 5, False, ("PT", "SY"), _SCT_IDS),
    Source("MDRSPA", "SPA", 2, False, ("PT", "LLT"), _MDR_IDS),
    Source("MSHGER", "GER", 7, False, ("MH", "ET"), _MSH_IDS),
    Source("MDRGER", "GER", 3, False, ("PT", "LLT"), _MDR_IDS),
    Source("MSHDUT", "DUT", 6, False, ("MH", "ET"), _MSH_IDS),
    Source("MDRDUT", "DUT", 4, False, ("PT", "LLT"), _MDR_IDS),
    Source("MSHJPN", "JPN", 5, False, ("MH", "ET"), _MSH_IDS),
    Source("MDRJPN", "JPN", 5, False, ("PT", "LLT"), _MDR_IDS),
)
LANGUAGES = ("ENG", "SPA", "FRE", "GER", "JPN", "DUT")
SEPARATORS = tuple("" if lang == "JPN" else " " for lang in LANGUAGES)  # between the words of a name
FOREIGN_LANGUAGE_WEIGHTS = (35, 20, 15, 20, 10)  # of LANGUAGES[1:]

# (TUI, STN, STY, weight). The second group descends from none of the ST21pv seed types.
SEMANTIC_TYPES = (
    ("T047", "B2.2.1.2.1", "Disease or Syndrome", 14), ("T046", "B2.2.1.2", "Pathologic Function", 3),
    ("T184", "A2.2.2", "Sign or Symptom", 3), ("T033", "A2.2", "Finding", 6),
    ("T121", "A1.4.1.1.1", "Pharmacologic Substance", 7), ("T109", "A1.4.1.2.1", "Organic Chemical", 7),
    ("T116", "A1.4.1.2.1.7", "Amino Acid, Peptide, or Protein", 7),
    ("T023", "A1.2.3.1", "Body Part, Organ, or Organ Component", 4), ("T025", "A1.2.3.3", "Cell", 1),
    ("T061", "B1.3.1.3", "Therapeutic or Preventive Procedure", 4), ("T060", "B1.3.1.2", "Diagnostic Procedure", 2),
    ("T059", "B1.3.1.1", "Laboratory Procedure", 3), ("T037", "B2.3", "Injury or Poisoning", 2),
    ("T007", "A1.1.2", "Bacterium", 2), ("T005", "A1.1.4", "Virus", 1), ("T204", "A1.1.3", "Eukaryote", 3),
    ("T074", "A1.3.1", "Medical Device", 2), ("T201", "A2.3.1", "Clinical Attribute", 1),
    ("T082", "A2.1.5", "Spatial Concept", 0.5), ("T029", "A2.1.5.2", "Body Location or Region", 1),
    ("T170", "A2.4", "Intellectual Product", 1.5), ("T185", "A2.4.1", "Classification", 0.5),
    ("T098", "A2.9.2", "Population Group", 0.5), ("T097", "A2.9.1", "Professional or Occupational Group", 0.5),
    ("T091", "A2.6.1", "Biomedical Occupation or Discipline", 0.5), ("T092", "A2.7", "Organization", 1),
    ("T168", "A1.4.3", "Food", 1), ("T031", "A1.4.2", "Body Substance", 1), ("T022", "A2.1.4.1", "Body System", 0.5),
    ("T038", "B2.2.1", "Biologic Function", 2), ("T062", "B1.3.2", "Research Activity", 1),
    ("T058", "B1.3.1", "Health Care Activity", 1),
    ("T079", "A2.1.1", "Temporal Concept", 3.5), ("T080", "A2.1.2", "Qualitative Concept", 4),
    ("T081", "A2.1.3", "Quantitative Concept", 3.5), ("T071", "A", "Entity", 1),
    ("T078", "A2.1", "Idea or Concept", 3), ("T169", "A2.1.4", "Functional Concept", 3),
)

# Real words, most frequent first; pseudo-words from syllables make up the long tail.
STEMS = """
type cell receptor protein disease syndrome disorder acute chronic carcinoma infection deficiency
cancer tumor neoplasm malignant benign primary secondary left right upper lower anterior posterior
lateral medial congenital hereditary familial idiopathic acquired severe mild moderate stage grade
level serum plasma blood urine test measurement assay antibody antigen gene mutation factor kinase
inhibitor agonist antagonist tablet capsule injection solution oral topical mg ml dose therapy
procedure surgery resection excision biopsy repair transplantation imaging scan ultrasound
radiography examination finding pain fever fracture injury lesion ulcer inflammation hemorrhage
hypertension diabetes mellitus failure insufficiency obstruction stenosis cyst polyp abscess edema
necrosis fibrosis atrophy hyperplasia dysplasia metastasis lymphoma leukemia sarcoma melanoma
adenoma adenocarcinoma squamous small large non lung liver kidney heart brain bone skin breast colon
stomach pancreas prostate ovary uterus cervix bladder thyroid adrenal spleen muscle nerve artery
vein joint spine eye ear nose throat mouth tooth head neck chest abdomen pelvis hand foot arm leg
finger knee hip shoulder wrist ankle tissue membrane duct gland vessel valve cardiac renal hepatic
pulmonary cerebral vascular neural gastric intestinal cutaneous ocular viral bacterial fungal
parasitic human mouse virus bacteria strain species family genus enzyme hormone vitamin acid sodium
potassium calcium chloride hydrochloride sulfate phosphate glucose insulin cholesterol lipid
hemoglobin albumin creatinine count ratio concentration activity function process pathway regulation
binding transport metabolism synthesis signaling response development differentiation growth
apoptosis complex domain subunit alpha beta gamma delta kappa class group member like related
associated induced dependent positive negative normal abnormal increased decreased elevated low high
total free partial complete multiple single unilateral recurrent persistent transient neonatal
pediatric adult maternal fetal patient history status risk care education management assessment
screening monitoring treatment prevention control device system catheter implant prosthesis DNA RNA
HIV IgG IgM CD4 CD8 HLA B12 p53 II III 1 2 3 COVID-19 T-cell X-linked mRNA ATP pH
""".split()

_ONSETS = "b c d f g h l m n p r s t v z br cr dr gl pl pr st tr ch ph th".split()
_VOWELS = "a e i o u y ae io ou".split()
_CODAS = ["", "", "", "n", "r", "s", "l", "x", "m"]
_SUFFIXES = ["itis", "oma", "osis", "ase", "in", "ine", "ic", "al", "ous", "ema", "ia",
             "ide", "ol", "yl", "ate", "ism", "gen", "cyte", "plasty", "ectomy", "pathy", "emia", "algia"]
_KATAKANA = "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワン"
# (old, new, how many; -1 for all) applied in order: crude but deterministic "translations".
_TRANSLATION_RULES = {
    "FRE": (("e", "é", 1), ("ic", "ique", -1), ("y", "ie", -1), ("ous", "eux", -1)),
    "SPA": (("tion", "ción", -1), ("ic", "ico", -1), ("y", "ía", -1), ("ph", "f", -1), ("o", "ó", 1)),
    "GER": (("ph", "f", -1), ("c", "k", -1), ("u", "ü", 1), ("o", "ö", 1)),
    "DUT": (("ph", "f", -1), ("c", "k", -1), ("y", "ij", -1), ("ie", "ië", -1)),
}

_QUALIFIERS = (", NOS", " NOS", " (disorder)", " (finding)", " (procedure)", " (substance)",
               " (body structure)", ", unspecified", " [Ambiguous]")
_NUMBERINGS = (" type 1", " type 2", " 2", " II", ", type 3", "-1", " stage III", " (1)", " 4")
_MODIFIERS = ("acute", "chronic", "primary", "secondary", "congenital", "malignant", "benign",
              "recurrent", "severe", "left", "right", "bilateral", "Acute", "Chronic")


# -- synonym variants: (words, separator, random int) -> name -----------------------------

def _capitalized(ws, sep, r):
    text = sep.join(ws)
    return text[:1].upper() + text[1:]


def _verbatim(ws, sep, r):
    return sep.join(ws)


def _lower(ws, sep, r):
    return sep.join(ws).lower()


def _upper(ws, sep, r):
    return sep.join(ws).upper()


def _title(ws, sep, r):
    return sep.join(ws).title()


def _rotated(ws, sep, r):
    if len(ws) < 2:
        return sep.join(ws)
    i = 1 + r % (len(ws) - 1)
    return sep.join(ws[i:] + ws[:i])


def _inverted(ws, sep, r):  # "carcinoma, lung"
    if len(ws) < 2:
        return sep.join(ws)
    return ws[-1] + ", " + sep.join(ws[:-1])


def _qualified(ws, sep, r):
    return sep.join(ws) + _QUALIFIERS[r % len(_QUALIFIERS)]


def _acronym(ws):
    return "".join(w[0] for w in ws).upper() if len(ws) > 1 else ws[0].upper()


def _abbreviated(ws, sep, r):
    return _acronym(ws)


def _with_acronym(ws, sep, r):
    return f"{sep.join(ws)} ({_acronym(ws)})"


def _hyphenated(ws, sep, r):
    if len(ws) < 2:
        return sep.join(ws)
    i = r % (len(ws) - 1)
    return sep.join(ws[:i] + [ws[i] + "-" + ws[i + 1]] + ws[i + 2:])


def _numbered(ws, sep, r):
    return sep.join(ws) + _NUMBERINGS[r % len(_NUMBERINGS)]


def _dropped(ws, sep, r):
    if len(ws) < 2:
        return sep.join(ws)
    i = r % len(ws)
    return sep.join(ws[:i] + ws[i + 1:])


def _modified(ws, sep, r):
    return _MODIFIERS[r % len(_MODIFIERS)] + " " + sep.join(ws)


# The preferred name is the capitalized base name. Verbatim, lower, upper, title and
# hyphenated variants normalize back to it, so a KB builder sees within-concept duplicates.
PREFERRED_VARIANT = _capitalized
ENGLISH_VARIANTS = ((_verbatim, 10), (_lower, 10), (_upper, 3), (_title, 7), (_rotated, 10), (_inverted, 10),
                    (_qualified, 12), (_abbreviated, 4), (_with_acronym, 5), (_hyphenated, 5), (_numbered, 6),
                    (_dropped, 8), (_modified, 10))
FOREIGN_VARIANTS = ((_capitalized, 40), (_verbatim, 20), (_rotated, 20), (_dropped, 20))


class _Pool(NamedTuple):
    ids: np.ndarray
    p: np.ndarray

    @classmethod
    def of(cls, ids, weights) -> _Pool:
        weights = np.asarray(weights, dtype=np.float64)
        return cls(np.asarray(ids, dtype=np.int64), weights / weights.sum())

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(self.ids, size=n, p=self.p)


def _rate(target: float, total: int, eligible: int) -> float:
    """Per-eligible-item probability that makes `target` the share among all `total` items."""
    return min(1.0, target * total / max(eligible, 1))


def _translate(word: str, lang: str) -> str:
    if lang == "JPN":
        return "".join(_KATAKANA[ord(ch) % len(_KATAKANA)] for ch in word[::2])
    for old, new, count in _TRANSLATION_RULES[lang]:
        word = word.replace(old, new, count)
    return word[:1].upper() + word[1:] if lang == "GER" else word


def _vocabulary(rng: np.random.Generator) -> list[str]:
    syllables = [o + v + c for o in _ONSETS for v in _VOWELS for c in _CODAS]
    seen = set(STEMS)
    pseudo: list[str] = []
    while len(pseudo) < N_PSEUDO_WORDS:
        n = N_PSEUDO_WORDS
        lengths = rng.choice([1, 2, 3], size=n, p=[0.4, 0.45, 0.15]).tolist()
        parts = rng.integers(0, len(syllables), (n, 3)).tolist()
        suffixes = np.where(rng.random(n) < 0.4, rng.integers(0, len(_SUFFIXES), n), -1).tolist()
        for k, syl, suf in zip(lengths, parts, suffixes):
            word = "".join(syllables[i] for i in syl[:k]) + (_SUFFIXES[suf] if suf >= 0 else "")
            if len(word) > 2 and word not in seen:
                seen.add(word)
                pseudo.append(word)
    return STEMS + pseudo[:N_PSEUDO_WORDS]


class _Release:
    """Generates the release block by block of concepts, from one random stream."""

    def __init__(self, seed: int, names_per_concept: float):
        self.rng = np.random.default_rng(seed)
        extra_names = names_per_concept - 1
        # Negative binomial: Poisson-like around the mean with a long tail (clipped at 40).
        self.extra_names_p = 1.5 / (1.5 + extra_names)
        english = _vocabulary(self.rng)
        self.vocabularies = [english] + [[_translate(w, lang) for w in english] for lang in LANGUAGES[1:]]
        ranks = np.arange(len(english), dtype=np.float64)
        self.word_cdf = np.cumsum((ranks + 2.0) ** -ZIPF_EXPONENT)
        self.word_cdf /= self.word_cdf[-1]

        self.variants = (PREFERRED_VARIANT,) + tuple(v for v, _ in ENGLISH_VARIANTS + FOREIGN_VARIANTS)
        n_english = len(ENGLISH_VARIANTS)
        self.english_variants = _Pool.of(range(1, 1 + n_english), [w for _, w in ENGLISH_VARIANTS])
        self.foreign_variants = _Pool.of(range(1 + n_english, 1 + n_english + len(FOREIGN_VARIANTS)),
                                         [w for _, w in FOREIGN_VARIANTS])

        def pool(keep):
            ids = [i for i, s in enumerate(SOURCES) if keep(s)]
            return _Pool.of(ids, [SOURCES[i].weight for i in ids])

        self.language_sources = [pool(lambda s, lang=lang: s.lat == lang) for lang in LANGUAGES]
        self.listed_sources = pool(lambda s: s.lat == "ENG" and s.listed)
        self.unlisted_sources = pool(lambda s: s.lat == "ENG" and not s.listed)
        self.foreign_languages = _Pool.of(range(1, len(LANGUAGES)), FOREIGN_LANGUAGE_WEIGHTS)
        self.source_sab = [s.sab for s in SOURCES]
        self.n_ttys = np.array([len(s.ttys) for s in SOURCES])
        self.tty_base = np.cumsum(self.n_ttys) - self.n_ttys
        self.source_ids = [s.ids.replace("{sab}", s.sab).replace("{tty}", tty).format
                           for s in SOURCES for tty in s.ttys]
        # Multipliers ending in 3 are coprime to 10**7, so each source's codes are distinct.
        self.code_multiplier = 1_000_003 + 7_919 * 10 * np.arange(len(SOURCES))
        self.lat_ts = [f"{lang}|{ts}" for lang in LANGUAGES for ts in "PS"]

        self.types = [f"{tui}|{stn}|{sty}" for tui, stn, sty, _ in SEMANTIC_TYPES]
        self.type_pool = _Pool.of(range(len(SEMANTIC_TYPES)), [w for *_, w in SEMANTIC_TYPES])
        self.atoms_done = 0
        self.atuis_done = 0

    def _words(self, n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self.word_cdf, self.rng.random(n), side="right"),
                          len(self.word_cdf) - 1)

    def block(self, first_cui: int, n: int) -> tuple[tuple[str, int], tuple[str, int], tuple[str, int]]:
        """(text, rows) of MRCONSO, MRDEF and MRSTY for concepts first_cui .. first_cui + n - 1."""
        rng = self.rng
        counts = np.minimum(1 + rng.negative_binomial(1.5, self.extra_names_p, n), MAX_NAMES_PER_CONCEPT)
        ends = np.cumsum(counts)
        starts = ends - counts
        n_rows = int(ends[-1])
        concept = np.repeat(np.arange(n), counts)
        cui = first_cui + concept

        preferred = np.zeros(n_rows, dtype=bool)
        preferred[starts + (rng.random(n) * counts).astype(np.int64)] = True
        synonym = ~preferred
        lang = np.zeros(n_rows, dtype=np.int64)
        foreign = synonym & (rng.random(n_rows) < _rate(FOREIGN_ROW_SHARE, n_rows, n_rows - n))
        lang[foreign] = self.foreign_languages.draw(rng, int(foreign.sum()))

        # Concepts flagged unlisted-only draw every English name from unlisted sources; the
        # others take their preferred name from a listed one.
        unlisted_only = (rng.random(n) < UNLISTED_ONLY_CONCEPT_SHARE)[concept]
        english = ~foreign
        source = np.empty(n_rows, dtype=np.int64)
        for mask, sources in ((english & synonym & ~unlisted_only, self.language_sources[0]),
                              (english & unlisted_only, self.unlisted_sources),
                              (preferred & ~unlisted_only, self.listed_sources),
                              *((lang == i, self.language_sources[i]) for i in range(1, len(LANGUAGES)))):
            source[mask] = sources.draw(rng, int(mask.sum()))
        tty = (rng.random(n_rows) * self.n_ttys[source]).astype(np.int64)
        tty[preferred] = 0
        code = (cui * self.code_multiplier[source] + 97 * source) % 10**7

        stt = rng.choice(4, size=n_rows, p=[0.55, 0.2, 0.15, 0.1])
        stt[preferred] = 0
        ispref = preferred | (rng.random(n_rows) < 0.6)
        suppress = np.zeros(n_rows, dtype=np.int64)
        suppressed = synonym & (rng.random(n_rows) < _rate(SUPPRESSED_ROW_SHARE, n_rows, n_rows - n))
        suppress[suppressed] = rng.choice([1, 2, 3], size=int(suppressed.sum()), p=[0.6, 0.25, 0.15])
        cvf = rng.random(n_rows) < 0.3

        names = self._names(n, counts, lang, foreign, preferred)
        atom = self.atoms_done + 1 + np.arange(n_rows)
        self.atoms_done += n_rows
        lat_ts, source_ids = self.lat_ts, self.source_ids
        stts, isprefs, suppresses, cvfs = ("PF", "VO", "VCW", "VW"), "NY", "NOEY", ("", "256")
        conso = "".join([
            f"C{c:07d}|{lat_ts[2 * lg + s]}|L{a:07d}|{stts[st]}|S{a:07d}|{isprefs[ip]}|A{a:08d}|"
            f"{source_ids[v](k, a)}|{name}|0|{suppresses[sp]}|{cvfs[cv]}|\n"
            for c, lg, s, a, st, ip, v, k, name, sp, cv in zip(
                cui.tolist(), lang.tolist(), synonym.tolist(), atom.tolist(), stt.tolist(), ispref.tolist(),
                (self.tty_base[source] + tty).tolist(), code.tolist(), names, suppress.tolist(), cvf.tolist())
        ])

        definitions, n_definitions = self._definitions(n, counts, starts, concept, foreign, lang, cui, atom, source)
        semantic_types, n_types = self._semantic_types(first_cui, n)
        return (conso, n_rows), (definitions, n_definitions), (semantic_types, n_types)

    def _names(self, n, counts, lang, foreign, preferred) -> list[str]:
        rng = self.rng
        n_rows = len(lang)
        n_words = np.minimum(1 + rng.poisson(2.5, n), MAX_NAME_WORDS)
        word_ends = np.cumsum(n_words)
        word_starts = word_ends - n_words
        words = self._words(int(word_ends[-1]))
        # A one-word name drawn by frequency would mostly be a common word shared by many
        # concepts; real single-word names are mostly rare (drugs, genes, organisms). Frequent
        # words would also often repeat ("type type"). Both get a pseudo-word instead.
        single = word_starts[n_words == 1]
        words[single] = rng.integers(len(STEMS), len(self.vocabularies[0]), len(single))
        repeated = np.flatnonzero(words[1:] == words[:-1]) + 1
        words[repeated] = rng.integers(len(STEMS), len(self.vocabularies[0]), len(repeated))

        variant = np.where(foreign, self.foreign_variants.draw(rng, n_rows),
                           self.english_variants.draw(rng, n_rows))
        variant[preferred] = 0
        r = rng.integers(0, 1 << 30, n_rows)
        vocabularies, variants = self.vocabularies, self.variants
        words = words.tolist()
        return [
            variants[v]([vocabularies[lg][i] for i in words[a:b]], SEPARATORS[lg], x)
            for lg, v, x, a, b in zip(lang.tolist(), variant.tolist(), r.tolist(),
                                      np.repeat(word_starts, counts).tolist(), np.repeat(word_ends, counts).tolist())
        ]

    def _definitions(self, n, counts, starts, concept, foreign, lang, cui, atom, source) -> tuple[str, int]:
        rng = self.rng
        per_concept = np.where(rng.random(n) < DEFINED_CONCEPT_SHARE, rng.integers(1, 4, n), 0)
        defined = np.repeat(np.arange(n), per_concept)
        n_defs = len(defined)
        # Rows of each concept with its English atoms first, to pick an atom by language.
        by_language = np.lexsort((foreign, concept))
        n_foreign = np.bincount(concept, weights=foreign, minlength=n).astype(np.int64)
        n_english = counts - n_foreign
        can_be_foreign = n_foreign[defined] > 0
        want_foreign = can_be_foreign & (
            rng.random(n_defs) < _rate(FOREIGN_DEFINITION_SHARE, n_defs, int(can_be_foreign.sum())))
        u = rng.random(n_defs)
        offset = np.where(want_foreign, n_english[defined] + (u * n_foreign[defined]).astype(np.int64),
                          (u * n_english[defined]).astype(np.int64))
        row = by_language[starts[defined] + offset]

        n_words = rng.integers(10, 61, n_defs)
        word_ends = np.cumsum(n_words)
        words = self._words(int(word_ends[-1]) if n_defs else 0).tolist()
        atui = self.atuis_done + 1 + np.arange(n_defs)
        self.atuis_done += n_defs
        cvf = rng.random(n_defs) < 0.3
        vocabularies, sabs = self.vocabularies, self.source_sab
        lines = []
        for c, a, t, src, lg, b, e, cv in zip(cui[row].tolist(), atom[row].tolist(), atui.tolist(),
                                              source[row].tolist(), lang[row].tolist(),
                                              (word_ends - n_words).tolist(), word_ends.tolist(), cvf.tolist()):
            text = SEPARATORS[lg].join(map(vocabularies[lg].__getitem__, words[b:e]))
            lines.append(f"C{c:07d}|A{a:08d}|AT{t:08d}||{sabs[src]}|{text[:1].upper()}{text[1:]}.|N|"
                         f"{'256' if cv else ''}|\n")
        return "".join(lines), n_defs

    def _semantic_types(self, first_cui, n) -> tuple[str, int]:
        rng = self.rng
        per_concept = 1 + (rng.random(n) < TWO_TYPES_SHARE)
        first = self.type_pool.draw(rng, n)
        second = self.type_pool.draw(rng, n)
        second = np.where(second == first, (first + 1) % len(self.types), second)
        typed = np.repeat(np.arange(n), per_concept)
        # A concept's second row (where it has one) sits right after its first.
        is_second = np.zeros(len(typed), dtype=bool)
        is_second[1:] = typed[1:] == typed[:-1]
        tui = np.where(is_second, second[typed], first[typed])
        atui = self.atuis_done + 1 + np.arange(len(typed))
        self.atuis_done += len(typed)
        types = self.types
        text = "".join([f"C{first_cui + c:07d}|{types[t]}|AT{a:08d}|256|\n"
                        for c, t, a in zip(typed.tolist(), tui.tolist(), atui.tolist())])
        return text, len(typed)


class _RrfWriter:
    """One release file, written under a temporary name; `commit` moves it into place."""

    def __init__(self, out_dir: Path, name: str, compress: bool):
        self.rows = 0
        self.text_bytes = 0
        self.path = out_dir / (name + ".gz" if compress else name)
        self._tmp = out_dir / f".{self.path.name}.{os.getpid()}.tmp"
        self._file = open(self._tmp, "wb")
        # No file name and mtime 0 in the gzip header keep the output byte-identical.
        self._out = (GzipFile(filename="", mode="wb", compresslevel=1, fileobj=self._file, mtime=0)
                     if compress else self._file)

    def write(self, text: str, rows: int) -> None:
        data = text.encode("utf-8")
        self._out.write(data)
        self.rows += rows
        self.text_bytes += len(data)

    def commit(self) -> int:
        """Move the file into place; return its size on disk."""
        self._close()
        os.replace(self._tmp, self.path)
        return self.path.stat().st_size

    def discard(self) -> None:
        self._close()
        self._tmp.unlink(missing_ok=True)

    def _close(self) -> None:
        self._out.close()
        self._file.close()


def write_synthetic_umls(out_dir: str | os.PathLike, n_concepts: int, seed: int = 0,
                         names_per_concept: float = 4.0, gzip: bool = False) -> dict:
    """Write MRCONSO, MRDEF, MRSTY (as .RRF.gz with `gzip`) and MRFILES.RRF into `out_dir`.

    Returns the counts: concepts, mrconso_rows, mrdef_rows, mrsty_rows, and bytes_written
    (on disk, all four files).
    """
    if not 1 <= n_concepts <= MAX_CONCEPTS:
        raise ValueError(f"n_concepts must be in 1..{MAX_CONCEPTS}, got {n_concepts}")
    if not names_per_concept >= 1:
        raise ValueError(f"names_per_concept must be at least 1, got {names_per_concept}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    release = _Release(seed, names_per_concept)
    with ExitStack() as cleanup:
        writers = {}
        for name in COLUMNS:
            writers[name] = _RrfWriter(out_dir, name, gzip)
            cleanup.callback(writers[name].discard)
        for first in range(0, n_concepts, BLOCK_CONCEPTS):
            n = min(BLOCK_CONCEPTS, n_concepts - first)
            for writer, (text, rows) in zip(writers.values(), release.block(first + 1, n)):
                writer.write(text, rows)
            print(f"synth_umls: {first + n:,}/{n_concepts:,} concepts, "
                  f"{writers['MRCONSO.RRF'].rows:,} MRCONSO rows, {time.perf_counter() - t0:.1f}s",
                  file=sys.stderr, flush=True)
        on_disk = {name: writer.commit() for name, writer in writers.items()}

        mrfiles = _RrfWriter(out_dir, "MRFILES.RRF", compress=False)
        cleanup.callback(mrfiles.discard)
        mrfiles.write("".join(f"{name}|{description}|{fmt}|{fmt.count(',') + 1}|{writers[name].rows}|"
                              f"{writers[name].text_bytes}|\n"
                              for name, (description, fmt) in COLUMNS.items()), len(COLUMNS))
        on_disk["MRFILES.RRF"] = mrfiles.commit()
    return {
        "concepts": n_concepts,
        "mrconso_rows": writers["MRCONSO.RRF"].rows,
        "mrdef_rows": writers["MRDEF.RRF"].rows,
        "mrsty_rows": writers["MRSTY.RRF"].rows,
        "bytes_written": sum(on_disk.values()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--concepts", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--names-per-concept", type=float, default=4.0, help="mean MRCONSO rows per concept")
    p.add_argument("--gzip", action="store_true", help="write MRCONSO.RRF.gz etc. (gzip level 1)")
    args = p.parse_args()
    try:
        counts = write_synthetic_umls(args.out_dir, args.concepts, seed=args.seed,
                                      names_per_concept=args.names_per_concept, gzip=args.gzip)
    except ValueError as e:
        p.error(str(e))
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
