"""Model presets, the one log-prob function, and the NLL and DPO objectives (pure torch)."""

import math

import pyarrow as pa
import pytest
import torch

from angel_dist.kb.table import assemble_kb, write_kb
from angel_dist.model import PRESETS, encode, load_model, score
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


@pytest.fixture(scope="module")
def model(tokenizer):
    m = load_model("tiny", tokenizer, seed=0)
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


def test_presets_match_bart_shapes(tokenizer):
    large = PRESETS["large"]
    assert (large["d_model"], large["encoder_layers"], large["decoder_ffn_dim"]) == (1024, 12, 4096)
    m = load_model("tiny", tokenizer)
    assert m.config.vocab_size == len(tokenizer) and m.config.decoder_start_token_id == tokenizer.eos_token_id
    with pytest.raises(ValueError, match="not a preset"):
        load_model("huge", tokenizer)


def test_score_is_the_sum_of_target_token_logprobs(model, tokenizer):
    b = _batch(tokenizer, ROWS)
    s = _score(model, b)
    with torch.no_grad():
        # Each row alone, unpadded, by hand.
        for i, row in enumerate(ROWS):
            one = _batch(tokenizer, [row])
            logits = model(input_ids=one["source_ids"], attention_mask=one["source_mask"],
                           decoder_input_ids=one["decoder_ids"]).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            want, n, smooth = 0.0, 0, 0.0
            for t in range(1, one["decoder_ids"].shape[1]):
                if one["target_mask"][0, t]:
                    want += logp[t - 1, one["decoder_ids"][0, t]].item()
                    smooth += -logp[t - 1].mean().item()
                    n += 1
            assert s.logp[i].item() == pytest.approx(want, abs=1e-4)
            assert s.tokens[i].item() == n and s.smooth[i].item() == pytest.approx(smooth, abs=1e-3)


def test_shared_encoder_pass_gives_the_same_scores(model, tokenizer):
    b = _batch(tokenizer, ROWS)
    with torch.no_grad():
        states = encode(model, b["source_ids"], b["source_mask"])
        shared = score(model, b["source_mask"], b["decoder_ids"], b["decoder_mask"], b["target_mask"],
                       encoder_states=states)
        direct = _score(model, b)
    torch.testing.assert_close(shared.logp, direct.logp)
    with pytest.raises(ValueError, match="exactly one"):
        score(model, b["source_mask"], b["decoder_ids"], b["decoder_mask"], b["target_mask"])


def test_label_smoothed_nll_matches_torch_cross_entropy(model, tokenizer):
    b = _batch(tokenizer, ROWS)
    loss, metrics = label_smoothed_nll(_score(model, b), epsilon=0.1)
    logits = model(input_ids=b["source_ids"], attention_mask=b["source_mask"], decoder_input_ids=b["decoder_ids"],
                   decoder_attention_mask=b["decoder_mask"]).logits
    mask = b["target_mask"][:, 1:]
    want = torch.nn.functional.cross_entropy(logits[:, :-1][mask], b["decoder_ids"][:, 1:][mask], label_smoothing=0.1)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert metrics["target_tokens"].item() == int(mask.sum())
    loss.backward()
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0
    model.zero_grad()


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
