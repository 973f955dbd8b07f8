"""The one log-prob function: how much a model believes `target` follows `source` and `prefix`.

Every score in the project comes from `score`: the NLL loss, DPO's policy and reference
log-probs, the log-probs stored in pair shards and the beam scores' checks. Decoder rows are
`[decoder_start] + prefix_ids + target_ids` with `target_mask` marking the target tokens (the
name and its eos); the logits at position t predict token t + 1, and only target tokens count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Scores:
    logp: torch.Tensor  # [B] sum of the target tokens' log-probs (prefix excluded)
    tokens: torch.Tensor  # [B] number of target tokens
    smooth: torch.Tensor  # [B] sum over target tokens of the mean over the vocabulary of -log p (label smoothing)


def encode(model, source_ids: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
    """Encoder states [B, S, H], to share one encoder pass between several decoder rows."""
    return model.get_encoder()(input_ids=source_ids, attention_mask=source_mask).last_hidden_state


def score(model, source_mask: torch.Tensor, decoder_ids: torch.Tensor, decoder_mask: torch.Tensor,
          target_mask: torch.Tensor, *, source_ids: torch.Tensor | None = None,
          encoder_states: torch.Tensor | None = None) -> Scores:
    """Per-row sums of target-token log-probs; give `source_ids` or precomputed `encoder_states`
    (rows of `encoder_states`/`source_mask` align with the decoder rows)."""
    if (source_ids is None) == (encoder_states is None):
        raise ValueError("pass exactly one of source_ids and encoder_states")
    # One call of the model, the encoder in it when it runs here: a DeepSpeed engine standing in
    # for the model (training) then sees the whole forward pass.
    source = {"input_ids": source_ids} if encoder_states is None else {"encoder_outputs": (encoder_states,)}
    out = model(attention_mask=source_mask, decoder_input_ids=decoder_ids, decoder_attention_mask=decoder_mask,
                use_cache=False, **source)
    mask = target_mask[:, 1:]
    rows = mask.nonzero(as_tuple=True)[0]
    # Normalize only the target positions: N x V instead of B x L x V.
    logits = out.logits[:, :-1][mask].float()
    labels = decoder_ids[:, 1:][mask]
    lse = torch.logsumexp(logits, dim=-1)
    token_logp = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse
    token_smooth = lse - logits.mean(dim=-1)
    zeros = torch.zeros(decoder_ids.shape[0], dtype=torch.float32, device=decoder_ids.device)
    return Scores(logp=zeros.index_add(0, rows, token_logp), tokens=mask.sum(dim=1),
                  smooth=zeros.index_add(0, rows, token_smooth))


def score_pairs(model, batch: dict) -> tuple[Scores, Scores]:
    """Chosen and rejected rows of a pair batch (the reader's layout), sharing one encoder pass:
    the policy's log-probs in DPO training and the reference log-probs written at mining."""
    states = encode(model, batch["source_ids"], batch["source_mask"])
    n = states.shape[0]
    both = score(model, torch.cat([batch["source_mask"]] * 2),
                 torch.cat([batch["chosen_decoder_ids"], batch["rejected_decoder_ids"]]),
                 torch.cat([batch["chosen_decoder_mask"], batch["rejected_decoder_mask"]]),
                 torch.cat([batch["chosen_target_mask"], batch["rejected_target_mask"]]),
                 encoder_states=torch.cat([states, states]))
    return (Scores(both.logp[:n], both.tokens[:n], both.smooth[:n]),
            Scores(both.logp[n:], both.tokens[n:], both.smooth[n:]))
