"""GenBioEL's positive objective: label-smoothed NLL of the name and its eos."""

from __future__ import annotations

import torch

from angel_dist.model.logprob import Scores


def label_smoothed_nll(scores: Scores, epsilon: float = 0.1) -> tuple[torch.Tensor, dict]:
    """Per target token (1 - eps) * -log p(y) + eps * mean_v -log p(v), averaged over the batch's tokens."""
    tokens = scores.tokens.sum().clamp(min=1)
    nll = -scores.logp.sum() / tokens
    loss = (1.0 - epsilon) * nll + epsilon * scores.smooth.sum() / tokens
    return loss, {"loss": loss.detach(), "nll": nll.detach(), "target_tokens": scores.tokens.sum().detach()}
