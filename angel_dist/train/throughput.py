"""Training throughput: a run's steady tokens/s, the model FLOPs a token read costs, and the
model FLOPs utilization (MFU) against the accelerator's dense bf16 peak. bench/train.py and
`angel preflight` report them."""

from __future__ import annotations

import itertools
from pathlib import Path

# Dense bf16 peak of the accelerators MFU is quoted against (datasheet, SXM parts).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def steady_rates(metrics: list[dict]) -> dict:
    """Mean tokens/s and samples/s of a run's logged intervals (read_metrics) after the first,
    which holds the warm-up."""
    steady = metrics[1:] or metrics
    return {k: sum(m[k] for m in steady) / len(steady) for k in ("tokens_per_s", "samples_per_s")}


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a device by its name (torch.cuda.get_device_name), None when unknown."""
    return next((v for k, v in PEAK_BF16.items() if k in device_name), None)


def model_flops_per_token(model, examples: str | Path, sample_limit: int = 4000) -> float:
    """Training FLOPs per token read (forward and backward, 3x the forward), padding excluded,
    on the lengths of the examples in the shard set `examples`, per token as the training loop
    counts them (the source and the decoder row). Every weight matrix, 2 FLOPs per multiply-add,
    is touched by the tokens of its stack: BART's encoder by the source, its decoder and LM head
    by the decoder row; a causal model's layers by its one row (the source without its `</s>`,
    the prefix, the name), its LM head by the name's positions alone (it keeps only their
    logits). Plus the attention products: encoder self, decoder causal self and cross; causal
    self over the row. Not TRL's compute_flops_per_token: it models a causal LM at one sequence
    length, not two stacks over the lengths of each example."""
    from angel_dist.shards.reader import iter_shard, open_shard_sets

    c = model.config
    embeddings = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    stack = {"encoder": 0, "decoder": 0}
    for name, w in model.named_parameters():
        if w.dim() == 2 and id(w) not in embeddings and "embed_positions" not in name:
            stack["encoder" if ".encoder." in name else "decoder"] += w.numel()
    head = model.get_output_embeddings().weight.numel()
    shards, _ = open_shard_sets(examples)
    flops = tokens = 0.0
    for s in itertools.islice((s for shard in shards for s in iter_shard(shard)), sample_limit):
        ls, lp, lt = len(s["source_ids"]), len(s["prefix_ids"]), len(s["target_ids"])
        ld = 1 + lp + lt
        if c.is_encoder_decoder:
            forward = 2 * (stack["encoder"] * ls + (stack["decoder"] + head) * ld)
            forward += 4 * c.d_model * (c.encoder_layers * ls * ls + c.decoder_layers * (ld * (ld + 1) / 2 + ld * ls))
        else:
            row = ls - 1 + lp + lt
            forward = 2 * (stack["decoder"] * row + head * (lt + 1))
            forward += 4 * c.hidden_size * c.num_hidden_layers * row * (row + 1) / 2
        flops, tokens = flops + 3 * forward, tokens + ls + ld
    return flops / tokens
