"""ANGEL's negative-aware objective: DPO on (chosen, rejected) names of one mention.

The reference log-probs come precomputed from the pair shards (scored by the model that mined
the round, through the same log-prob function), so no reference model is held in memory. With
the policy equal to the reference the `sigmoid` loss is exactly log 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSSES = ("sigmoid", "ipo", "hinge")


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, loss_type: str = "sigmoid",
             chosen_tokens: torch.Tensor | None = None, rejected_tokens: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict]:
    """Mean loss over pairs and the metrics TRL reports, equal to TRL's DPOTrainer's (tests/test_trl.py).
    Log-probs are per-sequence sums; `ipo` compares per-token means (as TRL does), so it needs the
    token counts; rewards are beta times the sequence log-ratios whatever the loss."""
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"loss_type must be one of {DPO_LOSSES}, got {loss_type!r}")
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    if loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the ipo loss needs chosen_tokens and rejected_tokens")
        losses = (chosen_logratio / chosen_tokens - rejected_logratio / rejected_tokens - 1.0 / (2.0 * beta)) ** 2
    elif loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * (chosen_logratio - rejected_logratio))
    else:
        losses = torch.relu(1.0 - beta * (chosen_logratio - rejected_logratio))
    loss = losses.mean()
    chosen_reward, rejected_reward = beta * chosen_logratio.detach(), beta * rejected_logratio.detach()
    return loss, {"loss": loss.detach(), "rewards_chosen": chosen_reward.mean(),
                  "rewards_rejected": rejected_reward.mean(), "margin": (chosen_reward - rejected_reward).mean(),
                  "accuracy": (chosen_reward > rejected_reward).float().mean()}
