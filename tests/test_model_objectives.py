"""Model presets of both families, the one log-prob function, and the NLL and DPO objectives (pure torch)."""

import math

import pyarrow as pa
import pytest
import torch

from angel_dist.kb.table import assemble_kb, write_kb
from angel_dist.model import PRESETS, family_of, load_model, score, score_pairs
from angel_dist.objectives import dpo_loss, label_smoothed_nll
from angel_dist.tokenizer import load_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    names = ["renal failure", "kidney failure", "cardiac arrest", "heart attack", "ataxia", "fever"]
    table, _ = assemble_kb(pa.table({"cui": ["C1", "C1", "C2", "C2", "C3", "C4"], "name": names}))
    write_kb(table, d / "kb.parquet", {"format": "test"})
    train_tokenizer(d / "kb.parquet", 300, d / "tok", progress=False)
    return load_tokenizer(d / "tok")


@pytest.fixture(scope="module", params=["tiny", "tiny-causal"])
def model(tokenizer, request):
    m = load_model(request.param, tokenizer, seed=0)
    m.eval()
    return m


def _batch(tokenizer, rows):
    """rows: (source, prefix, target) -> padded tensors in the reader's layout."""
    pad, start = tokenizer.pad_token_id, tokenizer.eos_token_id
    src = [tokenizer(s)["input_ids"] for s, _, _ in rows]
    dec, tmask = [], []
    for _, p, t in rows:
        pre = tokenizer(" " + p, add_special_tokens=False)["input_ids"]
        tgt = tokenizer(" " + t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        dec.append([start] + pre + tgt)
        tmask.append([False] * (1 + len(pre)) + [True] * len(tgt))
    S, L = max(map(len, src)), max(map(len, dec))
    b = {"source_ids": torch.full((len(rows), S), pad), "source_mask": torch.zeros(len(rows), S, dtype=torch.bool),
         "decoder_ids": torch.full((len(rows), L), pad), "decoder_mask": torch.zeros(len(rows), L, dtype=torch.bool),
         "target_mask": torch.zeros(len(rows), L, dtype=torch.bool)}
    for i, (s, d, m) in enumerate(zip(src, dec, tmask)):
        b["source_ids"][i, :len(s)] = torch.tensor(s)
        b["source_mask"][i, :len(s)] = True
        b["decoder_ids"][i, :len(d)] = torch.tensor(d)
        b["decoder_mask"][i, :len(d)] = True
        b["target_mask"][i, :len(m)] = torch.tensor(m)
    return b


ROWS = [("START renal failure END is defined as a kidney disease", "renal failure is", "kidney failure"),
        ("START ataxia END", "ataxia is", "ataxia"),
        ("heart attack, cardiac arrest are the synonyms of START mi END", "mi is", "cardiac arrest")]


def _score(model, b):
    return score(model, b["source_mask"], b["decoder_ids"], b["decoder_mask"], b["target_mask"],
                 source_ids=b["source_ids"])


def test_presets_match_bart_shapes_and_causal_ones_their_sizes(tokenizer):
    large = PRESETS["large"]
    assert (large["d_model"], large["encoder_layers"], large["decoder_ffn_dim"]) == (1024, 12, 4096)
    m = load_model("tiny", tokenizer)
    assert m.config.vocab_size == len(tokenizer) and m.config.decoder_start_token_id == tokenizer.eos_token_id
    for size in ("tiny", "small"):
        bart, llama = load_model(size, tokenizer), load_model(f"{size}-causal", tokenizer)
        assert type(llama).__name__ == "LlamaForCausalLM" and llama.config.tie_word_embeddings
        assert family_of(bart).name == "seq2seq" and family_of(llama).name == "causal"
        # The same parameters to within 5% at the demo's vocabulary (4000): here the vocabulary is
        # tiny, so the embeddings (shared by both) weigh less and BART's learned positions more.
        n_bart, n_llama = (sum(p.numel() for p in x.parameters()) for x in (bart, llama))
        assert 0.7 < n_llama / n_bart < 1.05, (size, n_bart, n_llama)
    with pytest.raises(ValueError, match="not a preset"):
        load_model("huge", tokenizer)


# What a truncated copy or a crafted file in a model directory (an export, a bundle's model/) looks
# like to the loaders: each is refused naming the file, or the directory where transformers gives
# no file, never loaded with random weights in place of the missing ones.
_DAMAGED = [("model.safetensors", b"\x80\x04not safetensors", "model.safetensors: not a safetensors file"),
            ("model.safetensors", "tensors", "lack .* of the model's tensors"),
            ("tokenizer.json", b"\x80\x04not json", "tokenizer.json: expected .*JSON"),
            ("tokenizer.json", b'{"version": 3}', "not a tokenizer transformers can read"),
            ("config.json", b'{"model_type": "bart", "d_model": "x"', "config.json: expected .*JSON"),
            ("config.json", b'{"model_type": "bart", "d_model": "x"}', "not a model transformers can read")]


@pytest.mark.parametrize("name,content,error", _DAMAGED)
def test_a_damaged_model_directory_is_refused_naming_it(model, tokenizer, tmp_path, name, content, error):
    from safetensors.torch import save_file

    from angel_dist.errors import BadInputError
    from angel_dist.model import save_model

    save_model(model, tokenizer, tmp_path)
    intact = load_model(str(tmp_path), tokenizer).state_dict()
    assert all(torch.equal(intact[k], v) for k, v in model.state_dict().items())
    if content == "tensors":  # a valid file holding the wrong tensors
        save_file({"x": torch.zeros(2)}, str(tmp_path / name))
    else:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(BadInputError, match=error) as raised:
        load_tokenizer(tmp_path) if name == "tokenizer.json" else load_model(str(tmp_path), tokenizer)
    assert raised.value.path.startswith(str(tmp_path))


def _by_hand(model, tokenizer, row):
    """The logits that predict the target tokens of one unpadded row, and those tokens."""
    source, prefix, target = row
    src = tokenizer(source)["input_ids"]
    pre = tokenizer(" " + prefix, add_special_tokens=False)["input_ids"]
    tgt = tokenizer(" " + target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if family_of(model).name == "seq2seq":
        dec = [model.config.decoder_start_token_id] + pre + tgt
        logits = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec])).logits[0]
        return logits[len(pre):-1], torch.tensor(tgt)
    ids = src[:-1] + pre + tgt  # the context without its </s>, the prefix, the target
    logits = model(input_ids=torch.tensor([ids])).logits[0]
    return logits[len(ids) - len(tgt) - 1:-1], torch.tensor(tgt)


def test_score_is_the_sum_of_target_token_logprobs(model, tokenizer):
    b = _batch(tokenizer, ROWS)
    s = _score(model, b)
    with torch.no_grad():
        for i, row in enumerate(ROWS):  # each row alone, unpadded, by hand
            logits, tgt = _by_hand(model, tokenizer, row)
            logp = torch.log_softmax(logits.float(), -1)
            assert s.logp[i].item() == pytest.approx(logp.gather(1, tgt[:, None]).sum().item(), abs=1e-4)
            assert s.tokens[i].item() == len(tgt)
            assert s.smooth[i].item() == pytest.approx(-logp.mean(-1).sum().item(), abs=1e-3)


def test_pair_rows_in_one_call_score_as_each_alone(model, tokenizer):
    chosen, rejected = _batch(tokenizer, ROWS), _batch(tokenizer, [(s, p, "fever") for s, p, _ in ROWS])
    pairs = {"source_ids": chosen["source_ids"], "source_mask": chosen["source_mask"]}
    for name, b in (("chosen", chosen), ("rejected", rejected)):
        pairs.update({f"{name}_decoder_ids": b["decoder_ids"], f"{name}_decoder_mask": b["decoder_mask"],
                      f"{name}_target_mask": b["target_mask"]})
    width = max(chosen["decoder_ids"].shape[1], rejected["decoder_ids"].shape[1])  # the reader pads them alike
    for k in list(pairs):
        if "decoder" in k or "target" in k:
            pairs[k] = torch.nn.functional.pad(pairs[k], (0, width - pairs[k].shape[1]))
    with torch.no_grad():
        both = score_pairs(model, pairs)
        for got, b in zip(both, (chosen, rejected)):
            torch.testing.assert_close(got.logp, _score(model, b).logp, atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="exactly one"):
            score(model, chosen["source_mask"], chosen["decoder_ids"], chosen["decoder_mask"], chosen["target_mask"])


def test_label_smoothed_nll_matches_torch_cross_entropy(model, tokenizer):
    b = _batch(tokenizer, ROWS)
    loss, metrics = label_smoothed_nll(_score(model, b), epsilon=0.1)
    logits, targets = zip(*(_by_hand(model, tokenizer, row) for row in ROWS))
    want = torch.nn.functional.cross_entropy(torch.cat(logits), torch.cat(targets), label_smoothing=0.1)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert metrics["target_tokens"].item() == sum(len(t) for t in targets)
    model.train()
    try:  # the gradient of left-padded causal rows too: padding positions must not poison it
        train_loss, _ = label_smoothed_nll(_score(model, b), epsilon=0.1)
        train_loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert model.get_input_embeddings().weight.grad.abs().sum() > 0
        assert all(torch.isfinite(g).all() for g in grads)
    finally:
        model.zero_grad()
        model.eval()


def test_dpo_losses():
    pc, pr = torch.tensor([-2.0, -5.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-2.5, -4.0]), torch.tensor([-2.0, -2.0])
    loss, m = dpo_loss(pc, pr, pc, pr, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7) and m["margin"].item() == 0
    logits = (pc - rc) - (pr - rr)  # [1.5, -2.0]
    loss, m = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert loss.item() == pytest.approx(torch.nn.functional.softplus(-0.1 * logits).mean().item())
    assert m["accuracy"].item() == 0.5
    assert m["rewards_chosen"].item() == pytest.approx((0.1 * (pc - rc)).mean().item())
    hinge, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="hinge")
    assert hinge.item() == pytest.approx(torch.relu(1 - 0.5 * logits).mean().item())
    n_c, n_r = torch.tensor([2.0, 4.0]), torch.tensor([1.0, 2.0])
    ipo, _ = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="ipo", chosen_tokens=n_c, rejected_tokens=n_r)
    per_token = (pc - rc) / n_c - (pr - rr) / n_r
    assert ipo.item() == pytest.approx(((per_token - 5.0) ** 2).mean().item())
    with pytest.raises(ValueError, match="token counts|chosen_tokens"):
        dpo_loss(pc, pr, rc, rr, loss_type="ipo")
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(pc, pr, rc, rr, loss_type="kto")


def test_batches_padded_to_fixed_lengths_score_and_lose_as_tight_ones(model, tokenizer):
    """pad_to_buckets: sources and decoder rows padded past the batch maximum (masked) give the
    log-probs and loss of the batch padded to its own maximum."""
    import numpy as np

    from angel_dist.shards.reader import collate

    def ids(text, special=True):
        return np.array(tokenizer(text, add_special_tokens=special)["input_ids"], dtype=np.int32)

    samples = [{"__key__": str(i), "kind": "kb", "cuis": ["C1"], "source": s, "prefix": p, "target": t,
                "source_ids": ids(s), "prefix_ids": ids(" " + p, False),
                "target_ids": np.append(ids(" " + t, False), tokenizer.eos_token_id)} for i, (s, p, t) in enumerate(ROWS)]
    batch_ids = family_of(model).batch_ids(model, tokenizer)
    tight, padded = collate(samples, **batch_ids), collate(samples, **batch_ids, pad_to=(2, 64))
    for key in ("source_ids", "decoder_ids", "target_mask"):
        assert tight[key].shape[1] < padded[key].shape[1] == 64
    with torch.no_grad():
        a, b = _score(model, tight), _score(model, padded)
    assert torch.allclose(a.logp, b.logp, atol=1e-5) and torch.equal(a.tokens, b.tokens)
    assert label_smoothed_nll(b)[0].item() == pytest.approx(label_smoothed_nll(a)[0].item(), abs=1e-5)


def test_padded_lengths_are_the_next_fixed_one_and_at_most_8_are_taken():
    from angel_dist.shards.reader import padded_length
    from angel_dist.train.config import TrainConfig
    from angel_dist.typed import ConfigError

    assert [padded_length(n, (8, 16)) for n in (1, 8, 9, 16, 17, 33)] == [8, 8, 16, 16, 32, 48]
    assert padded_length(13) == 13
    assert TrainConfig(data=["d"], pad_to_buckets=[16, 32, 64]).pad_to_buckets == [16, 32, 64]
    for bad in ([32, 16], [16, 16], list(range(1, 10))):
        with pytest.raises(ConfigError, match="pad_to_buckets: expected at most 8 increasing lengths"):
            TrainConfig(data=["d"], pad_to_buckets=bad)
