"""The arithmetic of repeated rounds (recipe key `seeds`): each arm's mean and sample standard
deviation over the seeds, and the paired difference ANGEL - matched NLL per seed.

The pairing is what makes a small gain visible: both arms of one seed start from the same
positive-only model and take the same number of optimizer steps, so the seed-to-seed spread
they share (which training examples were mined and in what order) cancels in their difference.
"""

from __future__ import annotations

from statistics import mean, stdev

ARMS = ("positive-only", "angel", "matched")
PAIRED = "angel - matched"


def spread(values: list[float]) -> dict:
    """Mean and sample standard deviation (n - 1; None for a single value)."""
    return {"mean": mean(values), "sd": stdev(values) if len(values) > 1 else None}


def seed_summary(positive: dict, per_seed: dict[str, dict]) -> dict:
    """{split: {metric: {arm: {"mean", "sd"}, PAIRED: {"per_seed": {seed: d}, "mean", "sd"}}}} for
    every acc@ metric of every split the positive-only scores have. `positive`: {split: {metric:
    value}}, the one positive-only model every seed starts from (its sd is 0); `per_seed`: {seed:
    {"angel": scores, "matched": scores}}, scores of the same shape."""
    out = {}
    for split, metrics in positive.items():
        out[split] = {}
        for metric in (m for m in metrics if m.startswith("acc@")):
            values = {arm: [scores[arm][split][metric] for scores in per_seed.values()] for arm in ARMS[1:]}
            values["positive-only"] = [metrics[metric]] * len(per_seed)
            paired = {seed: scores["angel"][split][metric] - scores["matched"][split][metric]
                      for seed, scores in per_seed.items()}
            out[split][metric] = {**{arm: spread(values[arm]) for arm in ARMS},
                                  PAIRED: {"per_seed": paired, **spread(list(paired.values()))}}
    return out
