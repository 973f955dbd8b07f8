"""Trie-constrained beam search: exact against brute-force scoring, batch-independent, KB names only,
for both backbone families."""

import copy

import numpy as np
import pyarrow as pa
import pytest
import torch

from angel_dist.decode import BeamSearch, SearchStats
from angel_dist.kb.table import assemble_kb, read_kb, read_kb_meta, write_kb
from angel_dist.model import family_of, load_model, score
from angel_dist.tokenizer import load_tokenizer, train_tokenizer
from angel_dist.trie import Trie
from angel_dist.trie.build import build_trie

NAMES = ["renal failure", "kidney failure", "cardiac arrest", "heart attack", "ataxia", "fever", "high fever",
         "renal cyst", "kidney stone", "cardiac failure", "heart failure", "gait ataxia"]
CUIS = ["C1", "C1", "C2", "C2", "C3", "C4", "C4", "C5", "C6", "C7", "C7", "C3"]
INPUTS = [("START renal failure END is defined as a kidney disease", "renal failure is"),
          ("START ataxia END", "ataxia is"),
          ("heart attack, cardiac arrest are the synonyms of START mi END", "mi is"),
          ("the patient had START high fever END today", "high fever is"),
          ("START kidney stones END hurt", "kidney stones is")]


@pytest.fixture(scope="module")
def kb_tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("decode")
    table, _ = assemble_kb(pa.table({"cui": CUIS, "name": NAMES}))
    write_kb(table, d / "kb.parquet", {"format": "test"})
    train_tokenizer(d / "kb.parquet", 300, d / "tok", progress=False)
    tok = load_tokenizer(d / "tok")
    build_trie(d / "kb.parquet", tok, d / "trie", progress=False)
    return tok, Trie.load(d / "trie")


@pytest.fixture(scope="module", params=["tiny", "tiny-causal"])
def small(kb_tok, request):
    tok, trie = kb_tok
    model = load_model(request.param, tok, seed=1).eval()
    sources = [np.array(tok(s)["input_ids"]) for s, _ in INPUTS]
    prefixes = [np.array(tok(" " + p, add_special_tokens=False)["input_ids"]) for _, p in INPUTS]
    return tok, trie, model, sources, prefixes


def _fit(model, tok, sources, prefixes, targets, steps=150):
    from angel_dist.shards.reader import collate

    samples = [{"__key__": str(i), "kind": "kb", "cuis": [], "prefix": "", "target": t, "source_ids": s,
                "prefix_ids": p, "target_ids": np.array(tok(" " + t, add_special_tokens=False)["input_ids"]
                                                        + [tok.eos_token_id])}
               for i, (s, p, t) in enumerate(zip(sources, prefixes, targets))]
    batch = collate(samples, **family_of(model).batch_ids(model, tok))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    torch.manual_seed(0)
    for _ in range(steps):
        s = score(model, batch["source_mask"], batch["decoder_ids"], batch["decoder_mask"], batch["target_mask"],
                  source_ids=batch["source_ids"])
        loss = -(s.logp / s.tokens).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _logp(tok, model, source, prefix, continuations: list[list[int]]) -> torch.Tensor:
    """The log-prob of each token sequence after the forced prefix, teacher-forced by the log-prob function."""
    start = family_of(model).batch_ids(model, tok)["decoder_start_id"]
    rows = [[start, *prefix, *c] for c in continuations]
    length = max(map(len, rows))
    dec = torch.full((len(rows), length), tok.pad_token_id)
    dmask = torch.zeros(len(rows), length, dtype=torch.bool)
    tmask = dmask.clone()
    for i, r in enumerate(rows):
        dec[i, :len(r)] = torch.tensor(r)
        dmask[i, :len(r)] = True
        tmask[i, 1 + len(prefix):len(r)] = True
    src = torch.tensor(source)[None].repeat(len(rows), 1)
    with torch.no_grad():
        return score(model, torch.ones_like(src, dtype=torch.bool), dec, dmask, tmask, source_ids=src).logp


def _name_ids(tok, names):
    return [tok(" " + n, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for n in names]


def _brute_force(tok, trie, model, source, prefix):
    """Every KB name scored teacher-forced by the log-prob function: (name, logp / tokens), best first."""
    names = trie.names()["name"].to_pylist()
    ids = _name_ids(tok, names)
    logp = _logp(tok, model, source, prefix, ids)
    norm = [lp / len(i) for lp, i in zip(logp.tolist(), ids)]
    return sorted(zip(names, norm), key=lambda x: -x[1])


def _fairseq(tok, trie, model, source, prefix, k):
    """fairseq's beam search over the KB names, step by step: the k best candidates by cumulative
    log-prob; those ending in eos finish (until k have), the k best others go on; finished names
    ranked by log-prob / tokens. Returns (name, score), best first."""
    names = trie.names()["name"].to_pylist()
    ids = _name_ids(tok, names)
    beams, finished = [()], []
    while beams and len(finished) < k:
        cands = sorted({tuple(i[:len(b) + 1]) for b in beams for i in ids if tuple(i[:len(b)]) == b})
        logp = _logp(tok, model, source, prefix, [list(c) for c in cands]).tolist()
        ranked = sorted(zip(cands, logp), key=lambda x: -x[1])
        ends = [c for c in ranked[:k] if c[0][-1] == tok.eos_token_id]
        finished += ends[:k - len(finished)]
        beams = [c for c, _ in ranked if c[-1] != tok.eos_token_id][:k]
    return sorted(((names[ids.index(list(c))], lp / len(c)) for c, lp in finished), key=lambda x: -x[1])


def test_beams_at_least_names_rank_like_brute_force(small):
    tok, trie, model, sources, prefixes = small
    found = BeamSearch(model, trie, beams=len(NAMES) + 3, batch_size=8).search(sources, prefixes)
    names = trie.names()["name"].to_pylist()
    for source, prefix, hyps in zip(sources, prefixes, found):
        expected = _brute_force(tok, trie, model, source, prefix)
        assert [names[h.name_id] for h in hyps] == [n for n, _ in expected]  # every name, in the same order
        np.testing.assert_allclose([h.score for h in hyps], [s for _, s in expected], atol=1e-5)
        assert all(abs(h.score - h.logp / h.tokens) < 1e-6 for h in hyps)


def test_batched_equals_one_at_a_time_and_outputs_are_kb_names(small):
    tok, trie, model, sources, prefixes = small
    search = BeamSearch(model, trie, beams=4, batch_size=3)
    stats = SearchStats()
    batched = search.search(sources, prefixes, stats)
    single = [search.search([s], [p])[0] for s, p in zip(sources, prefixes)]
    assert [[h.name_id for h in r] for r in batched] == [[h.name_id for h in r] for r in single]
    np.testing.assert_allclose([h.score for r in batched for h in r], [h.score for r in single for h in r], atol=1e-5)
    assert all(len(r) == 4 for r in batched)
    assert len({len(p) for p in prefixes}) > 2  # the inputs' prefixes differ in length ...
    assert all(len(b["prefix_lens"]) > 1 for b in stats.batches)  # ... and every batch mixes them
    # Every result is a name of the KB, scored as the log-prob function scores it: the cache rows
    # followed their beams (the causal family moves only their generated columns).
    names = trie.names()["name"].to_pylist()
    for source, prefix, r in zip(sources, prefixes, batched):
        assert all(0 <= h.name_id < len(names) for h in r)
        assert [h.score for h in r] == sorted((h.score for h in r), reverse=True)
        expected = dict(_brute_force(tok, trie, model, source, prefix))
        np.testing.assert_allclose([h.score for h in r], [expected[names[h.name_id]] for h in r], atol=1e-5)


def test_fairseq_stop_is_fairseqs_beam_search(small):
    tok, trie, model, sources, prefixes = small
    beams = 3
    found = BeamSearch(model, trie, beams=beams, batch_size=8, stop="fairseq").search(sources, prefixes)
    names = trie.names()["name"].to_pylist()
    differs = 0
    for source, prefix, hyps in zip(sources, prefixes, found):
        expected = _fairseq(tok, trie, model, source, prefix, beams)
        assert [names[h.name_id] for h in hyps] == [n for n, _ in expected]
        np.testing.assert_allclose([h.score for h in hyps], [s for _, s in expected], atol=1e-5)
        differs += [n for n, _ in expected] != [n for n, _ in _brute_force(tok, trie, model, source, prefix)[:beams]]
    assert differs  # not the exact top names: the rule is not the exact search's


def _tempered(model, temperature):
    """A copy of `model` whose logits are its logits / temperature (the output layer scaled, untied
    from the embeddings it shares)."""
    tempered = copy.deepcopy(model)
    tempered.lm_head.weight = torch.nn.Parameter(tempered.lm_head.weight.detach() / temperature)
    if hasattr(tempered, "final_logits_bias"):
        tempered.final_logits_bias.div_(temperature)
    return tempered


def test_temperature_divides_the_logits_in_every_stopping_rule(small):
    tok, trie, model, sources, prefixes = small
    names = trie.names()["name"].to_pylist()
    tempered = _tempered(model, 0.3)
    exact = BeamSearch(model, trie, beams=len(NAMES) + 3, batch_size=8, temperature=0.3).search(sources, prefixes)
    fairseq = BeamSearch(model, trie, beams=3, batch_size=8, stop="fairseq", temperature=0.3).search(sources, prefixes)
    plain = BeamSearch(model, trie, beams=len(NAMES) + 3, batch_size=8).search(sources, prefixes)
    differs = 0
    for source, prefix, hyps, top, untempered in zip(sources, prefixes, exact, fairseq, plain):
        expected = _brute_force(tok, trie, tempered, source, prefix)
        assert [names[h.name_id] for h in hyps] == [n for n, _ in expected]
        np.testing.assert_allclose([h.score for h in hyps], [s for _, s in expected], atol=1e-5)
        expected = _fairseq(tok, trie, tempered, source, prefix, 3)
        assert [names[h.name_id] for h in top] == [n for n, _ in expected]
        np.testing.assert_allclose([h.score for h in top], [s for _, s in expected], atol=1e-5)
        differs += [h.name_id for h in hyps] != [h.name_id for h in untempered]
    assert differs  # the temperature reordered some input's names
    with pytest.raises(ValueError, match="temperature"):
        BeamSearch(model, trie, temperature=0.0)


def test_stopping_rules_on_a_real_kb(tmp_path):
    """HPO subset, 5 beams: the exact rule returns what running every beam to its end returns;
    the heuristic rule (HF generate's) stops sooner."""
    from angel_dist.kb.build import KbBuildConfig, build_kb

    build_kb(KbBuildConfig(format="obo", source="hpo", out=str(tmp_path / "hpo.parquet")), progress=False)
    write_kb(read_kb(tmp_path / "hpo.parquet").slice(0, 150), tmp_path / "kb.parquet",
             read_kb_meta(tmp_path / "hpo.parquet"))
    train_tokenizer(tmp_path / "kb.parquet", 800, tmp_path / "tok", progress=False)
    tok = load_tokenizer(tmp_path / "tok")
    build_trie(tmp_path / "kb.parquet", tok, tmp_path / "trie", progress=False)
    trie = Trie.load(tmp_path / "trie")
    names = trie.names()["name"].to_pylist()[:12]
    sources = [np.array(tok(f"the patient shows START {n} END")["input_ids"]) for n in names]
    prefixes = [np.array(tok(f" {n} is", add_special_tokens=False)["input_ids"]) for n in names]
    # An untrained model spreads its probability evenly, so no beam can be ruled out early;
    # a few steps of copying the mention make it as peaked as a trained one.
    model = _fit(load_model("tiny", tok, seed=3), tok, sources, prefixes, names)

    def run(stop, unbounded=False):
        search = BeamSearch(model, trie, beams=5, batch_size=4, stop=stop)
        if unbounded:
            search.heights = torch.full_like(search.heights, 10 ** 6)  # every beam runs to its end
        stats = SearchStats()
        found = search.search(sources, prefixes, stats)
        return [[h.name_id for h in r] for r in found], stats.row_steps

    exact, exact_steps = run("exact")
    full, full_steps = run("exact", unbounded=True)
    heuristic, heuristic_steps = run("heuristic")
    assert exact == full and exact_steps < full_steps
    assert heuristic_steps < exact_steps
    assert all(len(r) == 5 for r in heuristic)
    with pytest.raises(ValueError, match="stop"):
        BeamSearch(model, trie, stop="never")


def test_search_needs_eval_mode(small):
    tok, trie, model, *_ = small
    model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            BeamSearch(model, trie)
    finally:
        model.eval()


def test_log_normalizer_matches_logsumexp_in_and_beyond_the_unshifted_range():
    from angel_dist.decode.beam import log_normalizer_

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5000, generator=g) * 4
    logits[1] += 90  # e^x overflows float32 without a shift
    logits[2] -= 200  # e^x underflows to zero without a shift
    logits[3, 7] = 75.0  # one large logit among ordinary ones
    logits[4] *= 1e-3  # a near-uniform row
    expected = torch.logsumexp(logits.double(), -1).float()
    for rows in (slice(None), [0, 4, 5]):  # a batch that needs the shift, one that does not
        got = log_normalizer_(logits[rows].clone())
        assert torch.allclose(got, expected[rows], rtol=1e-6, atol=1e-5), (got, expected[rows])
    kept = logits.clone()
    log_normalizer_(kept[[0]])  # advanced indexing copies: the caller's tensor is untouched
    assert torch.equal(kept, logits)


def test_retaining_freed_memory_stops_page_faults_of_repeated_large_buffers():
    import subprocess
    import sys

    # A child process: the allocator setting is process-wide.
    code = """
import resource, torch
from angel_dist.allocator import retain_freed_memory
def faults():
    for _ in range(3):
        torch.ones(2_000_000)  # warm-up: 8 MB blocks
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.ones(2_000_000)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
default = faults()
assert retain_freed_memory()
print(default, faults())
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    default, retained = map(int, out.stdout.split())
    assert retained * 10 < default, (default, retained)
