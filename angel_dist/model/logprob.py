"""The one log-prob function: how much a model believes `target` follows `source` and `prefix`.

Every score in the project comes from `score`: the NLL loss, DPO's policy and reference
log-probs, the log-probs stored in pair shards and the beam scores' checks, for either backbone
family. The reader's layout goes in (source rows; decoder rows `[decoder_start] + prefix_ids +
target_ids` with `target_mask` marking the target tokens, the name and its eos); the family
(family.py) makes the model's rows of it; only target tokens count, the prompt never does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from angel_dist.model.family import encode, family_of

__all__ = ["Scores", "encode", "score", "score_pairs"]


@dataclass
class Scores:
    logp: torch.Tensor  # [B] sum of the target tokens' log-probs (prefix excluded)
    tokens: torch.Tensor  # [B] number of target tokens
    smooth: torch.Tensor  # [B] sum over target tokens of the mean over the vocabulary of -log p (label smoothing)

    def split(self, n: int) -> tuple["Scores", "Scores"]:
        """The first n rows and the rest."""
        return (Scores(self.logp[:n], self.tokens[:n], self.smooth[:n]),
                Scores(self.logp[n:], self.tokens[n:], self.smooth[n:]))


def score(model, source_mask: torch.Tensor, decoder_ids: torch.Tensor, decoder_mask: torch.Tensor,
          target_mask: torch.Tensor, *, source_ids: torch.Tensor | None = None,
          encoder_states: torch.Tensor | None = None) -> Scores:
    """Per-row sums of target-token log-probs; give `source_ids` or (seq2seq) precomputed
    `encoder_states` (rows of `encoder_states`/`source_mask` align with the decoder rows)."""
    if (source_ids is None) == (encoder_states is None):
        raise ValueError("pass exactly one of source_ids and encoder_states")
    inputs, ids, target = family_of(model).rows(model, source_mask, decoder_ids, decoder_mask, target_mask,
                                                source_ids=source_ids, encoder_states=encoder_states)
    out = model(**inputs, use_cache=False)
    mask = target[:, 1:]
    rows = mask.nonzero(as_tuple=True)[0]
    # Normalize only the target positions: N x V instead of B x L x V. Not TRL's
    # selective_log_softmax: the label-smoothing term needs the normalizer too, computed once here.
    logits = out.logits[:, -ids.shape[1]:][:, :-1][mask].float()
    labels = ids[:, 1:][mask]
    lse = torch.logsumexp(logits, dim=-1)
    token_logp = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse
    token_smooth = lse - logits.mean(dim=-1)
    zeros = torch.zeros(ids.shape[0], dtype=torch.float32, device=ids.device)
    return Scores(logp=zeros.index_add(0, rows, token_logp), tokens=mask.sum(dim=1),
                  smooth=zeros.index_add(0, rows, token_smooth))


def score_pairs(model, batch: dict) -> tuple[Scores, Scores]:
    """Chosen and rejected rows of a pair batch (the reader's layout), in one model call (seq2seq:
    sharing one encoder pass): the policy's log-probs in DPO training and the reference log-probs
    written at mining."""
    source = family_of(model).shared_source(model, batch["source_ids"], batch["source_mask"], 2)
    both = score(model, torch.cat([batch["source_mask"]] * 2),
                 torch.cat([batch["chosen_decoder_ids"], batch["rejected_decoder_ids"]]),
                 torch.cat([batch["chosen_decoder_mask"], batch["rejected_decoder_mask"]]),
                 torch.cat([batch["chosen_target_mask"], batch["rejected_target_mask"]]), **source)
    return both.split(len(batch["source_ids"]))
