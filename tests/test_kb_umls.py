import gzip
from pathlib import Path

import pytest

from angel_dist.errors import BadInputError, BadInputPolicy
from angel_dist.kb.build import KbBuildConfig, build_kb
from angel_dist.kb.rrf import read_rrf
from angel_dist.kb.table import read_kb
from angel_dist.kb.umls import UmlsConfig, read_umls
from conftest import DATA, needs_data


def conso(cui, aui, text, sab="MSH", lat="ENG", preferred=False, suppress="N"):
    ts, stt, ispref = ("P", "PF", "Y") if preferred else ("S", "VO", "N")
    return f"{cui}|{lat}|{ts}|L1|{stt}|S1|{ispref}|{aui}||||{sab}|SY|X|{text}|0|{suppress}|256|"


def sty(cui, tui, stn):
    return f"{cui}|{tui}|{stn}|Some Type|AT1|256|"


def definition(cui, aui, text, suppress="N"):
    return f"{cui}|{aui}|AT9||MSH|{text}|{suppress}||"


def write_meta(tmp_path: Path, conso_rows, sty_rows, def_rows=(), compress=False) -> Path:
    meta = tmp_path / "META"
    meta.mkdir()
    for name, rows in (("MRCONSO.RRF", conso_rows), ("MRSTY.RRF", sty_rows), ("MRDEF.RRF", def_rows)):
        data = ("\n".join(rows) + "\n").encode() if rows else b""
        if compress:
            (meta / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (meta / name).write_bytes(data)
    return meta


def build(tmp_path, meta, **umls):
    out = tmp_path / "kb.parquet"
    config = KbBuildConfig(format="umls", source=str(meta), out=str(out), umls=UmlsConfig(**umls))
    meta_written, policy = build_kb(config, progress=False)
    return {r["cui"]: r for r in read_kb(out).to_pylist()}, meta_written


@needs_data
def test_real_fixture(tmp_path):
    kb, meta = build(tmp_path, DATA / "umls_fixture")
    assert list(kb) == ["C0000005", "C0000039"]
    assert kb["C0000005"]["names"] == ["131 i macroaggregated albumin", "131 i maa"]
    assert kb["C0000005"]["types"] == ["T116"] and kb["C0000005"]["sources"] == ["MSH"]
    assert kb["C0000039"]["types"] == ["T109", "T121"]
    assert kb["C0000039"]["definitions"] == [
        "Synthetic phospholipid used in liposomes and lipid bilayers to study biological membranes."]
    assert meta["counts"]["mrconso_rows"] == 3


def test_semantic_type_descent_respects_the_dot_boundary(tmp_path):
    rows = [conso("C1", "A1", "Exact Seed"), conso("C2", "A2", "Child Type"),
            conso("C3", "A3", "Sibling Prefix"), conso("C4", "A4", "Elsewhere")]
    types = [sty("C1", "T017", "A1.2"), sty("C2", "T023", "A1.2.3.1"),
             sty("C3", "T999", "A1.22"), sty("C4", "T047", "B2.2.1.2.1")]
    kb, _ = build(tmp_path, write_meta(tmp_path, rows, types), seeds=("T017",))
    assert set(kb) == {"C1", "C2"}
    kb_by_stn, _ = build(tmp_path, tmp_path / "META", seeds=("A1.2", "T047"))
    assert set(kb_by_stn) == {"C1", "C2", "C4"}


def test_unknown_seed_is_an_error(tmp_path):
    meta = write_meta(tmp_path, [conso("C1", "A1", "x")], [sty("C1", "T017", "A1.2")])
    with pytest.raises(ValueError, match="T555"):
        build(tmp_path, meta, seeds=("T555",))


def test_source_filter_then_all_strings_of_the_concept(tmp_path):
    rows = [conso("C1", "A1", "From MeSH", sab="MSH"), conso("C1", "A2", "From LOINC", sab="LNC"),
            conso("C2", "A3", "Only LOINC", sab="LNC")]
    types = [sty("C1", "T047", "B2.2.1.2.1"), sty("C2", "T047", "B2.2.1.2.1")]
    kb, _ = build(tmp_path, write_meta(tmp_path, rows, types))
    assert set(kb) == {"C1"}
    assert kb["C1"]["names"] == ["from mesh", "from loinc"]
    assert kb["C1"]["sources"] == ["MSH", "LNC"]


def test_languages_and_definitions_of_non_english_atoms(tmp_path):
    rows = [conso("C1", "A1", "Heart Attack"), conso("C1", "A2", "Infarctus du myocarde", lat="FRE")]
    types = [sty("C1", "T047", "B2.2.1.2.1")]
    defs = [definition("C1", "A1", "English definition."), definition("C1", "A2", "Définition française."),
            definition("C9", "A9", "Concept not kept.")]
    meta = write_meta(tmp_path, rows, types, defs)
    kb, _ = build(tmp_path, meta)
    assert kb["C1"]["names"] == ["heart attack"]
    assert kb["C1"]["definitions"] == ["English definition."]
    both, _ = build(tmp_path, meta, languages=("ENG", "FRE"))
    assert both["C1"]["names"] == ["heart attack", "infarctus du myocarde"]
    assert both["C1"]["definitions"] == ["English definition.", "Définition française."]


def test_preferred_name_first_and_duplicates_after_normalization(tmp_path):
    rows = [conso("C1", "A1", "MI"), conso("C1", "A2", "Myocardial Infarction", preferred=True),
            conso("C1", "A3", "myocardial-infarction"), conso("C1", "A4", "()")]
    kb, meta = build(tmp_path, write_meta(tmp_path, rows, [sty("C1", "T047", "B2.2.1.2.1")]), seeds=("T047",))
    assert kb["C1"]["names"] == ["myocardial infarction", "mi"]
    assert meta["counts"]["empty_names_dropped"] == 1


def test_suppressed_kept_by_default_dropped_on_request(tmp_path):
    rows = [conso("C1", "A1", "Current"), conso("C1", "A2", "Obsolete", suppress="O"),
            conso("C1", "A3", "Editor", suppress="E"), conso("C1", "A4", "Yes", suppress="Y")]
    defs = [definition("C1", "A2", "Suppressed definition.", suppress="O")]
    meta = write_meta(tmp_path, rows, [sty("C1", "T047", "B2.2.1.2.1")], defs)
    kb, _ = build(tmp_path, meta, seeds=("T047",))
    assert kb["C1"]["names"] == ["current", "obsolete", "editor", "yes"]
    assert kb["C1"]["definitions"] == ["Suppressed definition."]
    dropped, _ = build(tmp_path, meta, seeds=("T047",), drop_suppressed=True)
    assert dropped["C1"]["names"] == ["current"] and dropped["C1"]["definitions"] == []


def test_gzip_release_reads_the_same(tmp_path):
    rows = [conso("C1", "A1", "Fever", preferred=True), conso("C1", "A2", "Pyrexia")]
    types = [sty("C1", "T184", "A2.2.2")]
    plain, _ = build(tmp_path / "a", write_meta(_mkdir(tmp_path / "a"), rows, types, [definition("C1", "A1", "Hot.")]))
    packed, _ = build(tmp_path / "b", write_meta(_mkdir(tmp_path / "b"), rows, types, [definition("C1", "A1", "Hot.")],
                                                 compress=True))
    assert plain == packed and plain["C1"]["names"] == ["fever", "pyrexia"]


def _mkdir(path):
    path.mkdir()
    return path


def test_wrong_field_count_names_file_and_line(tmp_path):
    rows = [conso("C1", "A1", "Fever"), conso("C1", "A2", "Pyrexia"), "C1|ENG|S|too|few|", conso("C1", "A3", "Hot")]
    meta = write_meta(tmp_path, rows, [sty("C1", "T184", "A2.2.2")])
    with pytest.raises(BadInputError) as err:
        build(tmp_path, meta)
    assert err.value.line == 3 and err.value.path.endswith("MRCONSO.RRF")
    assert "MRCONSO.RRF:3:" in str(err.value)
    out = tmp_path / "skip.parquet"
    _, policy = build_kb(KbBuildConfig(format="umls", source=str(meta), out=str(out), on_bad_input="skip"),
                         progress=False)
    assert policy.total_skipped == 1 and "MRCONSO.RRF:3:" in policy.examples[0]
    assert read_kb(out).to_pylist()[0]["names"] == ["fever", "pyrexia", "hot"]


def test_undecodable_bytes_name_the_line(tmp_path):
    meta = write_meta(tmp_path, [conso("C1", "A1", "Fever"), conso("C1", "A2", "Fever"),
                                 conso("C1", "A3", "Fever")], [sty("C1", "T184", "A2.2.2")])
    data = (meta / "MRCONSO.RRF").read_bytes().split(b"\n")
    data[1] = data[1].replace(b"Fever", b"Fe\xffver")
    (meta / "MRCONSO.RRF").write_bytes(b"\n".join(data))
    with pytest.raises(BadInputError, match=r"MRCONSO.RRF:2: undecodable bytes in field STR"):
        build(tmp_path, meta)
    policy = BadInputPolicy("skip")
    names, _, _ = read_umls(meta, UmlsConfig(), policy, progress=False)
    assert policy.total_skipped == 1 and names.num_rows == 2


def test_line_numbers_survive_block_boundaries_and_skips(tmp_path):
    lines = [f"C{i}|x{i}|" for i in range(40)]
    lines[7] = "bad"
    lines[23] = "C23|b\xe9ad|"  # latin-1 byte below, not UTF-8
    path = tmp_path / "T.RRF"
    path.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    policy = BadInputPolicy("skip")
    tables = list(read_rrf(path, ["A", "B"], ["A", "B"], policy, block_bytes=37, progress=False))
    assert sum(t.num_rows for t in tables) == 38
    assert [e.split(": ")[0] for e in policy.examples] == [f"{path}:8", f"{path}:24"]
    with pytest.raises(BadInputError) as err:
        list(read_rrf(path, ["A", "B"], ["A", "B"], BadInputPolicy(), block_bytes=37, progress=False))
    assert err.value.line == 8


def test_missing_mrconso_is_a_clear_error(tmp_path):
    (tmp_path / "META").mkdir()
    with pytest.raises(FileNotFoundError, match="MRCONSO.RRF"):
        build(tmp_path, tmp_path / "META")


def test_empty_mrconso_or_mrsty_is_named_unless_empty_is_allowed(tmp_path):
    meta = write_meta(tmp_path, [conso("C1", "A1", "Fever")], [])
    with pytest.raises(BadInputError, match=r"MRSTY.RRF: no concepts read; expected at least one \(--allow-empty"):
        build(tmp_path, meta)
    (meta / "MRCONSO.RRF").write_bytes(b"")
    with pytest.raises(BadInputError, match=r"MRCONSO.RRF, .*MRSTY.RRF: no concepts read"):
        build(tmp_path, meta)
    out = tmp_path / "empty.parquet"
    meta_written, _ = build_kb(KbBuildConfig(format="umls", source=str(meta), out=str(out), allow_empty=True),
                               progress=False)
    assert meta_written["concepts"] == 0 and read_kb(out).num_rows == 0


@pytest.mark.parametrize("damage", ["truncated", "flipped", "not gzip"])
def test_corrupt_gzip_names_the_file(tmp_path, damage):
    rows = [conso("C1", f"A{i}", f"Fever {i}") for i in range(2000)]
    meta = write_meta(tmp_path, rows, [sty("C1", "T184", "A2.2.2")], compress=True)
    packed = (meta / "MRCONSO.RRF.gz").read_bytes()
    broken = {"truncated": packed[: len(packed) // 2], "flipped": packed[:200] + bytes([packed[200] ^ 0xFF]) + packed[201:],
              "not gzip": b"MRCONSO, but not compressed\n"}[damage]
    (meta / "MRCONSO.RRF.gz").write_bytes(broken)
    with pytest.raises(BadInputError, match=r"MRCONSO.RRF.gz: corrupt or truncated compressed data after line \d+"):
        build(tmp_path, meta)


def test_a_malformed_row_with_undecodable_bytes_is_named_and_skippable(tmp_path):
    # pyarrow cannot pass such a row to its invalid-row handler; the reader finds it itself.
    path = tmp_path / "T.RRF"
    path.write_bytes(b"C1|a|\nC2|b\xff|extra|\nC3|c\r|\nC4|d|\n")
    with pytest.raises(BadInputError, match=r"T.RRF:2: expected 3 '\|'-separated fields .* found 4"):
        list(read_rrf(path, ["A", "B"], ["A", "B"], BadInputPolicy(), progress=False))
    policy = BadInputPolicy("skip")
    tables = list(read_rrf(path, ["A", "B"], ["A", "B"], policy, progress=False))
    assert [e.split(": ")[0] for e in policy.examples] == [f"{path}:2", f"{path}:3"]
    assert [row["A"] for t in tables for row in t.to_pylist()] == ["C1", "C4"]
    path.write_bytes(b"only\xff|bad|rows|\n")
    policy = BadInputPolicy("skip")
    assert sum(t.num_rows for t in read_rrf(path, ["A", "B"], ["A", "B"], policy, progress=False)) == 0
    assert policy.total_skipped == 1
