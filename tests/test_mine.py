"""Mining and evaluation on a Ray actor pool: pairs by the rule with reference log-probs,
one pair shard per input shard, rerun and killed-actor recovery, acc@k, the CLI."""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from angel_dist.corpus.similarity import CharTfidf
from angel_dist.evaluate import EvalConfig, accuracy, evaluate
from angel_dist.mine import MineConfig, mine
from angel_dist.mine.work import FAULT_ENV, GoldNames
from angel_dist.model import load_model, save_model, score
from angel_dist.pairs import Beam, preferences
from angel_dist.shards.reader import ReaderConfig, ShardLoader, collate, iter_shard, open_shard_sets
from angel_dist.tokenizer import load_tokenizer
from conftest import hpo_corpus


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ray_local):
    d = hpo_corpus(tmp_path_factory.mktemp("mine"), concepts=40, vocab_size=600, shards=3)
    tok = load_tokenizer(d / "tok")
    save_model(load_model("tiny", tok, seed=0), tok, d / "model")
    return d


def _mine(d, out, **kw):
    cfg = dict(model=str(d / "model"), trie=str(d / "trie"), data=str(d / "examples"), out=str(out), actors=2,
               progress=False)
    return mine(MineConfig(**{**cfg, **kw}))


def _pairs(out):
    shards, kind = open_shard_sets(out)
    assert kind == "pairs"
    return [s for shard in shards for s in iter_shard(shard)]


@pytest.fixture(scope="module")
def mined(setup):
    out = setup / "pairs"
    return out, _mine(setup, out)


@pytest.fixture(scope="module")
def predictions(setup):
    out = setup / "predictions.jsonl"
    summary = evaluate(EvalConfig(model=str(setup / "model"), trie=str(setup / "trie"), data=str(setup / "examples"),
                                  out=str(out), actors=2, progress=False))
    return summary, [json.loads(line) for line in out.read_text().splitlines()]


def test_pairs_follow_the_rule_on_the_searched_beams(setup, mined, predictions):
    out, manifest = mined
    _, records = predictions
    assert manifest["n_shards"] == 3  # one pair shard per input shard
    expected = set()
    for r in records:
        beams = [Beam(n, frozenset(c)) for n, c in zip(r["result"], r["cui_result"])]
        expected |= {(r["key"], p.chosen, p.rejected, p.chosen_rank, p.rejected_rank)
                     for p in preferences(beams, set(r["cui_label"]), 5)}
    pairs = _pairs(out)
    assert len(pairs) == manifest["total"] > 0
    assert {(p["source_key"], p["chosen"], p["rejected"], p["chosen_rank"], p["rejected_rank"]) for p in pairs} \
        == expected
    stats = manifest["stats"]
    assert stats["inputs"] == len(records) and stats["pairs"] == len(pairs)
    assert stats["top1_correct"] == sum(r["correctness"][0] for r in records)
    for p in pairs:
        assert set(p["chosen_cuis"]) & set(p["cuis"]) and not set(p["rejected_cuis"]) & set(p["cuis"])
        assert p["chosen_rank"] > p["rejected_rank"] or p["chosen_rank"] == 1


def test_reference_logps_are_the_log_prob_function_and_dpo_starts_at_log2(setup, mined):
    from angel_dist.train import TrainConfig
    from angel_dist.train.loop import dpo_step

    out, _ = mined
    tok = load_tokenizer(setup / "model")
    model = load_model(str(setup / "model"), tok).eval()
    pairs = _pairs(out)
    batch = collate(pairs, tok.pad_token_id, tok.eos_token_id)
    with torch.no_grad():
        chosen = score(model, batch["source_mask"], batch["chosen_decoder_ids"], batch["chosen_decoder_mask"],
                       batch["chosen_target_mask"], source_ids=batch["source_ids"])
    np.testing.assert_allclose(chosen.logp.numpy(), [p["ref_chosen_logp"] for p in pairs], atol=1e-5)
    loader = ShardLoader([str(out)], ReaderConfig(batch_size=4, seed=1), pad_id=tok.pad_token_id,
                         decoder_start_id=tok.eos_token_id, num_workers=0)
    first = next(iter(loader))
    with torch.no_grad():
        loss, metrics = dpo_step(model, first, TrainConfig(objective="dpo", tokenizer=str(setup / "model"), data=[str(out)]))
    assert abs(loss.item() - math.log(2)) < 1e-5


def test_trl_preference_parquet(mined):
    out, manifest = mined
    table = pq.read_table(out / "pairs.parquet")
    assert {"prompt", "chosen", "rejected", "ref_chosen_logps", "ref_rejected_logps"} <= set(table.column_names)
    assert table.num_rows == manifest["total"]
    for row, pair in zip(table.to_pylist(), _pairs(out)):  # the pair shards' order
        assert row["key"] == pair["__key__"] and row["prompt"] == f"{pair['prompt']} {pair['prefix']}"
        assert "START" in row["prompt"] and row["prompt"].endswith(" is")
        assert (row["chosen"], row["rejected"]) == (f" {pair['chosen']}", f" {pair['rejected']}")
        assert row["ref_chosen_logps"] == pair["ref_chosen_logp"]
        assert row["ref_rejected_logps"] == pair["ref_rejected_logp"]


def test_a_rounds_mining_bar_ends_at_the_examples_read_and_counts_the_mentions_searched(setup, tmp_path, capsys):
    # A fine-tuning round mines one chunk of the examples: the bar's total is every example read.
    manifest = _mine(setup, tmp_path / "pairs", progress=True, chunk=0, chunks=2)
    examples = sum(s.count for s in open_shard_sets(str(setup / "examples"))[0])
    searched = manifest["stats"]["inputs"]
    assert 0 < searched < examples
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert f"{examples}/{examples}" in last and f"searched={searched}" in last, last


def test_killed_actor_redoes_its_shard_and_rerun_skips(setup, mined, monkeypatch):
    clean_out, clean = mined
    out = setup / "pairs-killed"
    monkeypatch.setenv(FAULT_ENV, "1:5")  # the actor on input shard 1 dies after 5 inputs
    killed = _mine(setup, out)
    assert (out / ".fault-injected-1-5").exists()
    assert [s["sha256"] for s in killed["shards"]] == [s["sha256"] for s in clean["shards"]]
    monkeypatch.delenv(FAULT_ENV)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    again = _mine(setup, out)
    assert again["shards"] == killed["shards"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")} == mtimes
    with pytest.raises(ValueError, match="another shard set"):
        _mine(setup, out, dpo_topk=3)


def test_gold_fallback_pairs_mentions_without_a_correct_beam(setup, mined, predictions):
    _, records = predictions
    out = setup / "pairs-gold"
    manifest = _mine(setup, out, gold_fallback=True, actors=1)
    pairs = _pairs(out)
    fallback = [p for p in pairs if p["chosen_rank"] == 0]
    missed = [r for r in records if not any(r["correctness"][:5])]
    assert len(fallback) == 5 * len(missed) > 0
    names = {n for r in records for n in r["result"]}
    for p in fallback:
        assert set(p["chosen_cuis"]) == set(p["cuis"]) and p["rejected"] in names
    assert manifest["total"] == len(fallback) + mined[1]["total"]


def test_gold_names_lists_each_concepts_names_in_table_order_and_picks_the_most_similar():
    names = ["heart attack", "myocardial infarction", "cardiac arrest", "MI", "cardiac arrest, sudden"]
    cuis = [["C1"], ["C2", "C1"], ["C2"], ["C1"], ["C2"]]
    table = pa.concat_tables([pa.table({"name": names[:2], "cuis": cuis[:2]}),
                              pa.table({"name": names[2:], "cuis": cuis[2:]})])  # two chunks
    gold = GoldNames(table)
    assert gold.names_of("C1") == ["heart attack", "myocardial infarction", "MI"]
    assert gold.names_of("C2") == ["myocardial infarction", "cardiac arrest", "cardiac arrest, sudden"]
    assert gold.names_of("C0") == gold.names_of("C3") == []
    assert gold.most_similar("myocardial infarct", ["C2"]) == "myocardial infarction"
    assert gold.most_similar("sudden cardiac arrest", ["C1", "C2"]) == "cardiac arrest, sudden"
    assert gold.most_similar("anything", ["C9"]) is None


def test_idf_of_arrow_arrays_equals_that_of_their_list(monkeypatch):
    import angel_dist.corpus.similarity as similarity

    names = [f"name {i} of {'abc'[i % 3]}" for i in range(11)]
    unsampled = CharTfidf.fit(names).idf
    monkeypatch.setattr(similarity, "FIT_SAMPLE", 4)  # the strided sample is taken alike
    sampled = CharTfidf.fit(names).idf
    assert not np.array_equal(sampled, unsampled)
    assert np.array_equal(CharTfidf.fit(pa.array(names)).idf, sampled)
    assert np.array_equal(CharTfidf.fit(pa.chunked_array([names[:5], names[5:]])).idf, sampled)


def test_evaluation_summary_and_records(predictions):
    summary, records = predictions
    assert summary["mentions"] == len(records) > 0 and summary["gold_missing_from_kb"] == 0
    accs = [summary[f"acc@{k}"] for k in range(1, 11)]
    assert accs == sorted(accs)
    assert accs[0] == sum(r["correctness"][0] for r in records) / len(records)
    for r in records:
        assert set(r) >= {"given_mention", "result", "cui_label", "cui_result", "correctness"}
        assert len(r["result"]) == 10 and r["scores"] == sorted(r["scores"], reverse=True)


def test_accuracy_counts_gold_missing_from_the_kb_as_misses():
    records = [{"cui_label": ["A"], "cui_result": [["B"], ["A"]]},
               {"cui_label": ["Z"], "cui_result": [["B"], ["C"]]},
               {"cui_label": ["C", "Y"], "cui_result": [["C", "D"], ["B"]]}]
    summary = accuracy(records, 2, kb_cuis={"A", "B", "C", "D"})
    assert summary == {"mentions": 3, "acc@1": 1 / 3, "acc@2": 2 / 3, "gold_missing_from_kb": 1}


def test_cli_link(setup, capsys):
    import re

    from angel_dist.cli import main

    assert main(["link", "--model", str(setup / "model"), "--trie", str(setup / "trie"), "--beams", "3",
                 "the child had START kidney cysts END at birth"]) == 0
    text, *lines = capsys.readouterr().out.strip("\n").splitlines()
    assert text == "the child had START kidney cysts END at birth"
    kb_names = set(pq.read_table(setup / "trie" / "names.parquet")["name"].to_pylist())
    rows = [re.match(r"^\s*(\d+)\s+(-?[\d.]+)\s+(.*?)\s+\[", line).groups() for line in lines]
    assert [int(r[0]) for r in rows] == [1, 2, 3] and all(r[2] in kb_names for r in rows)
    assert [float(r[1]) for r in rows] == sorted((float(r[1]) for r in rows), reverse=True)
    assert main(["link", "--model", str(setup / "model"), "--trie", str(setup / "trie"), "no mention here"]) == 2
    assert "START mention END" in capsys.readouterr().err


def test_cli_evaluate_prints_the_table_of_the_summary(setup, predictions, capsys):
    from angel_dist.cli import main

    summary, _ = predictions
    assert main(["evaluate", "--model", str(setup / "model"), "--trie", str(setup / "trie"), "--data",
                 str(setup / "examples"), "--k", "5", "--json", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {k: printed[k] for k in ("mentions", "acc@1", "acc@5")} == {k: summary[k] for k in ("mentions", "acc@1", "acc@5")}
    assert "acc@6" not in printed


def test_evaluate_stop_fairseq_searches_with_fairseqs_rule(setup, tmp_path):
    from angel_dist.cli import main
    from angel_dist.decode import Linker

    out = tmp_path / "fairseq.jsonl"
    assert main(["evaluate", "--model", str(setup / "model"), "--trie", str(setup / "trie"), "--data",
                 str(setup / "examples"), "--beams", "4", "--stop", "fairseq", "--out", str(out), "--quiet"]) == 0
    records = {r["key"]: r["result"] for r in map(json.loads, out.read_text().splitlines())}
    shards, _ = open_shard_sets(setup / "examples")
    # Evaluation searches each distinct input once (one key of rows sharing their input).
    samples = [s for shard in shards for s in iter_shard(shard) if s["__key__"] in records][:40]
    assert len(samples) == 40
    linker = Linker(setup / "model", setup / "trie", beams=4, stop="fairseq")
    found = linker.predict([s["source_ids"] for s in samples], [s["prefix_ids"] for s in samples])
    assert [records[s["__key__"]] for s in samples] == [[p.name for p in preds] for preds in found]


def test_tfidf_baseline_links_each_mention_to_its_nearest_names():
    from angel_dist.evaluate.tfidf_baseline import tfidf_records

    names = ["renal failure", "kidney failure", "heart attack", "fever"]
    cuis = [["C1"], ["C1"], ["C2"], ["C3"]]
    samples = [{"__key__": "a", "prefix": "renal failures is", "cuis": ["C1"]},
               {"__key__": "b", "prefix": "heart attacks is", "cuis": ["C9"]}]
    records = tfidf_records(names, cuis, samples, 2)
    assert records[0]["result"][0] == "renal failure" and records[0]["correctness"][0]
    assert records[1]["result"][0] == "heart attack" and not any(records[1]["correctness"])
    assert accuracy(records, 2) == {"mentions": 2, "acc@1": 0.5, "acc@2": 0.5}
