import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from transformers import AutoTokenizer

from angel_dist.kb.build import KbBuildConfig, build_kb
from angel_dist.kb.table import assemble_kb, kb_fingerprint, write_kb
from angel_dist.tokenizer import BART_SPECIAL_TOKENS, load_tokenizer, tokenizer_fingerprint, train_tokenizer
from angel_dist.trie import Trie
from angel_dist.trie.build import build_trie
from angel_dist.trie.trie import ARRAYS
from conftest import DATA, needs_data

NAMES = [("C1", "Myocardial Infarction"), ("C1", "Heart attack"), ("C1", "MI"), ("C2", "Diabetes mellitus"),
         ("C2", "DM"), ("C3", "Lung cancer"), ("C3", "Carcinoma of lung"), ("C4", "MI"),
         ("C5", "Fever"), ("C5", "Pyrexia"), ("C6", "Heart failure")]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    names = pa.table({"cui": [c for c, _ in NAMES], "name": [n for _, n in NAMES]})
    attributes = pa.table({"cui": ["C1", "C4"], "definitions": [["Death of heart muscle."], []],
                           "alt_ids": [["OMIM:1"], ["MESH:D4"]]})
    table, _ = assemble_kb(names, attributes)
    write_kb(table, root / "kb.parquet", {"format": "test"})
    train_tokenizer(root / "kb.parquet", 300, root / "tok", min_frequency=1, progress=False)
    tokenizer = load_tokenizer(root / "tok")
    build_trie(root / "kb.parquet", tokenizer, root / "trie", progress=False)
    return root, tokenizer


def test_trained_tokenizer_loads_with_autotokenizer_and_has_bart_specials(small):
    root, tokenizer = small
    auto = AutoTokenizer.from_pretrained(str(root / "tok"))
    assert [auto.convert_ids_to_tokens(i) for i in range(5)] == BART_SPECIAL_TOKENS
    assert (auto.bos_token_id, auto.pad_token_id, auto.eos_token_id) == (0, 1, 2)
    ids = auto(" heart attack").input_ids
    assert ids[0] == 0 and ids[-1] == 2 and auto.decode(ids[1:-1]) == " heart attack"
    info = json.loads((root / "tok" / "angel_tokenizer.json").read_text())
    assert info["fingerprint"] == tokenizer_fingerprint(auto)


def test_fingerprint_changes_with_the_vocabulary(small, tmp_path):
    root, tokenizer = small
    train_tokenizer(root / "kb.parquet", 290, tmp_path / "other", min_frequency=1, progress=False)
    assert tokenizer_fingerprint(load_tokenizer(tmp_path / "other")) != tokenizer_fingerprint(tokenizer)
    assert tokenizer_fingerprint(load_tokenizer(root / "tok")) == tokenizer_fingerprint(tokenizer)


def test_name_table_maps_names_to_all_concept_ids(small):
    root, _ = small
    names = {r["name"]: r["cuis"] for r in Trie.load(root / "trie").names().to_pylist()}
    assert names["mi"] == ["C1", "C4", "MESH:D4", "OMIM:1"]
    assert names["fever"] == ["C5"]
    assert len(names) == 10  # "mi" is shared by two concepts


def test_trie_records_fingerprints_and_refuses_another_tokenizer(small, tmp_path):
    root, tokenizer = small
    trie = Trie.load(root / "trie")
    assert trie.meta["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert trie.meta["kb_fingerprint"] == kb_fingerprint(root / "kb.parquet")
    trie.check_tokenizer(tokenizer_fingerprint(tokenizer))
    with pytest.raises(ValueError, match="built with tokenizer"):
        trie.check_tokenizer("0" * 32)


def test_opened_trie_is_memory_mapped_not_copied(small):
    root, _ = small
    trie = Trie.load(root / "trie")
    for name in ARRAYS:
        array = getattr(trie._csr, name)
        assert isinstance(array, np.memmap), name
        assert trie._t[name].data_ptr() == array.ctypes.data, name


def assert_every_name_reachable(trie_dir, tokenizer):
    trie = Trie.load(trie_dir)
    names = trie.names()["name"].to_pylist()
    encoded = [tokenizer(" " + n, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for n in names]
    longest = max(map(len, encoded))
    padded = torch.tensor([e + [tokenizer.eos_token_id] * (longest - len(e)) for e in encoded])
    lengths = torch.tensor([len(e) for e in encoded])
    states = trie.start(len(names))
    for d in range(longest):
        active = d < lengths
        eos_next = d == lengths - 1
        assert trie.allowed_mask(states[eos_next])[:, tokenizer.eos_token_id].all()
        states = torch.where(active, trie.advance(states, padded[:, d]), states)
    assert (states >= 0).all()
    assert torch.equal(trie.name_ids(states), torch.arange(len(names)))


def test_every_small_kb_name_is_reachable_and_ends_in_eos(small):
    root, tokenizer = small
    assert_every_name_reachable(root / "trie", tokenizer)


def test_every_hpo_name_is_reachable(tmp_path):
    build_kb(KbBuildConfig(format="obo", source="hpo", out=str(tmp_path / "hpo.parquet")), progress=False)
    train_tokenizer(tmp_path / "hpo.parquet", 4000, tmp_path / "tok", progress=False)
    tokenizer = load_tokenizer(tmp_path / "tok")
    meta = build_trie(tmp_path / "hpo.parquet", tokenizer, tmp_path / "trie", progress=False)
    assert meta["n_names"] > 35000
    assert_every_name_reachable(tmp_path / "trie", tokenizer)


@needs_data
def test_every_medic_name_is_reachable(tmp_path):
    build_kb(KbBuildConfig(format="medic", source=str(DATA / "kb" / "medic_06Jul2012.txt"),
                           out=str(tmp_path / "medic.parquet")), progress=False)
    train_tokenizer(tmp_path / "medic.parquet", 4000, tmp_path / "tok", progress=False)
    tokenizer = load_tokenizer(tmp_path / "tok")
    meta = build_trie(tmp_path / "medic.parquet", tokenizer, tmp_path / "trie", progress=False)
    assert meta["n_names"] > 70000
    assert_every_name_reachable(tmp_path / "trie", tokenizer)


def _pretrained_style(tokenizer, bos: bool):
    """The project tokenizer as causal LMs' tokenizers come: one opening every text with its bos and
    having no pad (Llama's), or having neither (Qwen's)."""
    import copy

    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    backend.post_processor = TemplateProcessing(single="<s> $A" if bos else "$A", special_tokens=[("<s>", 0)])
    specials = {"eos_token": "</s>", "unk_token": "<unk>", **({"bos_token": "<s>"} if bos else {})}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials)


@pytest.mark.parametrize("bos", [True, False])
def test_pretrained_tokenizer_conventions_trie_examples_and_search(small, tmp_path, bos):
    """A tokenizer that adds its bos to every text, or has none, and has no pad: the trie holds
    `tok(" " + name) + [eos]` without specials, sources open with the bos only when there is one,
    and a causal model scores and searches padded batches with eos standing in for pad."""
    from angel_dist.corpus.encode import encode_examples
    from angel_dist.corpus.example import Example
    from angel_dist.decode import BeamSearch
    from angel_dist.model import family_of, load_model, padding_id, score
    from angel_dist.shards.reader import collate

    root, bart = small
    tok = _pretrained_style(bart, bos)
    assert tok.pad_token_id is None and (tok("mi")["input_ids"][0] == 0) == bos
    build_trie(root / "kb.parquet", tok, tmp_path / "trie", progress=False)
    trie = Trie.load(tmp_path / "trie")
    for name_id, name in enumerate(trie.names()["name"].to_pylist()):
        seq = bart(" " + name, add_special_tokens=False)["input_ids"] + [2]  # no bos, the eos
        assert trie.state(seq) == trie.n_internal + name_id
    examples = [Example(key=f"k{i}", group="g", source=f"START {m} END is here", prefix=f"{m} is", target=t, cuis=[],
                        kind="mention", mention_span=(6, 6 + len(m)), keep="around")
                for i, (m, t) in enumerate([("heart attack", "mi"), ("lung cancer", "carcinoma of lung")])]
    encoded = encode_examples(examples, tok)
    assert [int(e.source_ids[0]) == 0 for e in encoded] == [bos, bos] and all(e.source_ids[-1] == 2 for e in encoded)
    model = load_model("tiny-causal", tok).eval()
    assert model.config.pad_token_id is None and padding_id(tok) == 2
    samples = [{"__key__": e.example.key, "kind": "mention", "cuis": [], "prefix": "", "target": "",
                "source_ids": e.source_ids, "prefix_ids": e.prefix_ids, "target_ids": e.target_ids} for e in encoded]
    batch = collate(samples, **family_of(model).batch_ids(model, tok))
    with torch.no_grad():
        both = score(model, batch["source_mask"], batch["decoder_ids"], batch["decoder_mask"], batch["target_mask"],
                     source_ids=batch["source_ids"]).logp
        alone = [score(model, b["source_mask"], b["decoder_ids"], b["decoder_mask"], b["target_mask"],
                       source_ids=b["source_ids"]).logp.item()
                 for b in (collate([s], **family_of(model).batch_ids(model, tok)) for s in samples)]
    np.testing.assert_allclose(both.numpy(), alone, atol=1e-5)
    found = BeamSearch(model, trie, beams=3).search([e.source_ids for e in encoded], [e.prefix_ids for e in encoded])
    assert [len(r) for r in found] == [3, 3] and all(0 <= h.name_id < trie.n_names for r in found for h in r)
