"""TRL as the oracle and the interchange: a causal model's pairs, mined by angel-dist and exported as
`pairs.parquet`, read by TRL's DPOTrainer; its DPO losses, rewards and margins equal ours, and it
trains on the export with the stored reference log-probs."""

import math

import numpy as np
import pytest
import torch

from angel_dist.mine import MineConfig, mine
from angel_dist.model import family_of, load_model, save_model, score_pairs
from angel_dist.objectives import DPO_LOSSES, dpo_loss
from angel_dist.shards.reader import collate, iter_shard, open_shard_sets
from angel_dist.tokenizer import load_tokenizer
from conftest import hpo_corpus

trl = pytest.importorskip("trl")


class StoredReferenceDPOTrainer(trl.DPOTrainer):
    """TRL's DPOTrainer reading the reference log-probs stored in the dataset. TRL 1.x takes
    `ref_chosen_logps`/`ref_rejected_logps` from the batch only with `precompute_ref_log_probs`,
    and then computes those columns itself in this pass; the export already holds them."""

    def _precompute_ref_logps(self, dataset, name, batch_size):
        return dataset


@pytest.fixture(scope="module")
def exported(tmp_path_factory, ray_local):
    """A causal model's mined pair set (gold fallback on, so an untrained model yields pairs)."""
    d = hpo_corpus(tmp_path_factory.mktemp("trl"), concepts=30, vocab_size=600, shards=2)
    tok = load_tokenizer(d / "tok")
    save_model(load_model("tiny-causal", tok, seed=0), tok, d / "model")
    mine(MineConfig(model=str(d / "model"), trie=str(d / "trie"), data=str(d / "examples"), out=str(d / "pairs"),
                    actors=1, gold_fallback=True, progress=False))
    return d


def _trainer(d, model, out, **config):
    from datasets import load_dataset

    dataset = load_dataset("parquet", data_files=str(d / "pairs" / "pairs.parquet"), split="train")
    # fp32 as our CPU training (TRL's default is bf16 autocast, on CPU too).
    args = trl.DPOConfig(output_dir=str(out), precompute_ref_log_probs=True, use_cpu=True, bf16=False, report_to="none",
                         per_device_train_batch_size=4, save_strategy="no", seed=0, dataloader_num_workers=0,
                         **config)
    return StoredReferenceDPOTrainer(model=model, args=args, train_dataset=dataset,
                                     processing_class=load_tokenizer(d / "model"))


def _our_batch(d, model, n):
    shards, _ = open_shard_sets(d / "pairs")
    samples = [s for shard in shards for s in iter_shard(shard)][:n]  # the parquet's rows, in order
    return samples, collate(samples, **family_of(model).batch_ids(model, load_tokenizer(d / "model")))


@pytest.mark.parametrize("loss_type", DPO_LOSSES)
def test_trl_dpo_loss_rewards_and_margins_equal_ours(exported, tmp_path, loss_type):
    d = exported
    tok = load_tokenizer(d / "model")
    policy = load_model("tiny-causal", tok, seed=1).eval()  # not the mining weights: rewards are not 0
    trainer = _trainer(d, policy, tmp_path, loss_type=[loss_type], beta=0.2)
    n = 8
    rows = [trainer.train_dataset[i] for i in range(n)]
    inputs = trainer.data_collator(rows)
    samples, batch = _our_batch(d, policy, n)
    # TRL's rows are ours: the exported prompt and completions tokenize to context + prefix + name + eos.
    for row, s in zip(rows, samples):
        assert row["prompt_ids"] == [*s["source_ids"][:-1], *s["prefix_ids"]]
        assert row["chosen_ids"] == s["chosen_ids"].tolist() and row["rejected_ids"] == s["rejected_ids"].tolist()
    with torch.no_grad():
        theirs = trainer.compute_loss(policy, inputs).item()
        chosen, rejected = score_pairs(policy, batch)
    ours, metrics = dpo_loss(chosen.logp, rejected.logp, batch["ref_chosen_logp"], batch["ref_rejected_logp"],
                             beta=0.2, loss_type=loss_type, chosen_tokens=chosen.tokens,
                             rejected_tokens=rejected.tokens)
    logged = {k: v[-1] for k, v in trainer._metrics["eval"].items()}  # the policy is in eval mode
    assert abs(metrics["margin"].item()) > 1e-3  # a test that could fail
    assert ours.item() == pytest.approx(theirs, abs=1e-5)
    for mine_, theirs_ in (("rewards_chosen", "rewards/chosen"), ("rewards_rejected", "rewards/rejected"),
                           ("margin", "rewards/margins"), ("accuracy", "rewards/accuracies")):
        assert metrics[mine_].item() == pytest.approx(logged[theirs_], abs=1e-5), mine_
    assert logged["logps/chosen"] == pytest.approx(chosen.logp.mean().item(), abs=1e-5)


def test_trl_trains_on_the_export_with_its_stored_reference_logps(exported, tmp_path):
    d = exported
    from datasets import load_dataset

    table = load_dataset("parquet", data_files=str(d / "pairs" / "pairs.parquet"), split="train")
    assert {"prompt", "chosen", "rejected", "ref_chosen_logps", "ref_rejected_logps"} <= set(table.column_names)
    assert all(p.endswith(" is") and "START" in p for p in table["prompt"])
    assert all(c.startswith(" ") for c in list(table["chosen"]) + list(table["rejected"]))
    model = load_model(str(d / "model"), load_tokenizer(d / "model"))  # the weights that mined the pairs
    trainer = _trainer(d, model, tmp_path, max_steps=2, logging_steps=1, learning_rate=1e-2, beta=0.1)
    assert trainer.ref_model is None  # no reference model: the stored columns are the reference
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logs] == [1, 2]
    # Policy = the mining weights at step 1: the stored log-probs are TRL's own, so the loss is log 2.
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert abs(logs[1]["rewards/margins"]) > 0 and math.isfinite(logs[1]["loss"])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert np.isfinite([h["loss"] for h in logs]).all()

