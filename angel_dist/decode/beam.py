"""Trie-constrained beam search: the top-k KB names a model writes after its forced prefix.

Per batch of inputs, the model's family (angel_dist/model/family.py) reads each input's source
and forced prefix in one prompt pass (prefixes of different lengths left-padded, so a batch of
any mentions is one set of rows) and then feeds one token per beam through its KV cache;
everything else here is the same for both families. Candidates are the
trie edges out of the beams' states (a few per beam), scored `beam log-prob + log p(token)`; the
K best non-eos candidates of an example become its beams, and its eos candidates compete for the
K finished names by the score of DESIGN.md: sum of name-token log-probs (eos included) / tokens.

Three stopping rules (`stop`):
- `"exact"` (the default): an example stops once it holds K finished names and no beam can
  still beat the worst of them, a beam's final score bounded by its log-prob divided by its
  longest possible length (log-probs only fall, and the trie bounds the length); the result is
  exactly what running every beam to its end gives. The bound is loose (a long name could
  dilute a poor start), so searches run deep.
- `"heuristic"`: HF `generate`'s default early stopping: as `exact`, but a beam is judged as if
  it ended now.
- `"fairseq"`: fairseq's rule, the one GenBioEL and ANGEL decode with: a name finishes when its
  eos candidate ranks among the example's K best candidates by cumulative log-prob (eos
  candidates below them are dropped); finished names are kept in the order they finish, and the
  example stops as soon as K have finished; they are then ranked by log-prob / length.
`temperature` T divides the logits before they become log-probs, as fairseq's generator does
(ANGEL decodes with 0.7, GenBioEL with 1): below 1 it sharpens each step's distribution, which
moves names with unlikely tokens further down and so changes which top-k sets are mined.
Stopped examples leave the batch, their cache rows with them, and each step's rows hold as many
beams per example as the example with the most live ones (the trie soon leaves most with few).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch

from angel_dist.model import family_of
from angel_dist.shards.reader import pad_rows
from angel_dist.trie import Trie


@dataclass(frozen=True)
class Hypothesis:
    name_id: int
    score: float  # logp / tokens: the ranking score
    logp: float  # sum of the name's token log-probs, eos included
    tokens: int  # name tokens + eos


@dataclass
class SearchStats:
    """What the search fed the model, batch by batch: the shapes a forward-only floor replays."""
    batches: list[dict] = field(default_factory=list)  # {"examples", "prefix_lens", "rows": [rows per step]}

    @property
    def row_steps(self) -> int:
        return sum(sum(b["rows"]) for b in self.batches)


def batches(sources: list[np.ndarray], prefixes: list[np.ndarray], batch_size: int) -> list[list[int]]:
    """Example indices sorted by (source, prefix) length, cut into batches of `batch_size`: little
    padding in each, and a deterministic function of the lengths only."""
    order = sorted(range(len(sources)), key=lambda i: (len(sources[i]), len(prefixes[i]), i))
    return [order[lo:lo + batch_size] for lo in range(0, len(order), batch_size)]


def batch_inputs(sources: list[np.ndarray], prefixes: list[np.ndarray], pad: int, device) -> tuple[torch.Tensor, ...]:
    """The prompt pass's tensors: (source ids, source mask, prefix ids, prefix mask), right-padded."""
    return tuple(t.to(device) for t in (*pad_rows(sources, pad), *pad_rows(prefixes, pad)))


Stop = Literal["exact", "heuristic", "fairseq"]
STOPS = get_args(Stop)

# Rows whose largest logit lies in this range sum exp(logits) without a shift: no term
# overflows float32 (e^70 times any vocabulary is far below 3e38), and terms that underflow
# sit over 27 nats below the largest, beyond float32's precision.
_UNSHIFTED = (-60.0, 70.0)


def log_normalizer_(logits: torch.Tensor) -> torch.Tensor:
    """log sum exp of each row, what turns a logit into a log-prob; overwrites `logits` (when
    float32) with exponentials, so gather what you need from them first.

    exp in place and a sum, without the subtraction pass of the textbook log-sum-exp
    (needed only when a row's largest logit leaves the safe range) and without the fresh
    [rows, V] table that log_softmax writes: on CPU that table, not the arithmetic, was most
    of what a search added to the model's own forward."""
    logits = logits.float()
    top = logits.amax(-1)
    if bool(((top > _UNSHIFTED[0]) & (top < _UNSHIFTED[1])).all()):
        return logits.exp_().sum(-1).log()
    return logits.sub_(top[:, None]).exp_().sum(-1).log() + top


@dataclass
class _Finished:
    """The K best finished names per row (best first): score, log-prob, name id, tokens."""
    score: torch.Tensor
    logp: torch.Tensor
    name: torch.Tensor
    tokens: torch.Tensor

    @classmethod
    def empty(cls, n: int, k: int, device) -> "_Finished":
        return cls(torch.full((n, k), -torch.inf, device=device), torch.zeros((n, k), device=device),
                   torch.full((n, k), -1, dtype=torch.long, device=device),
                   torch.zeros((n, k), dtype=torch.long, device=device))

    def merge(self, logp: torch.Tensor, names: torch.Tensor, length: int, keep_old: bool = False) -> "_Finished":
        """Add the names that ended now ([slots, n] log-probs, -inf where none ended), keep the
        K best of each slot; with `keep_old` (fairseq's rule) the names finished before stay
        and the new ones fill the free places, best first."""
        k = self.score.shape[1]
        scores = torch.cat([self.score, logp / length], 1)
        if keep_old:
            rank = torch.cat([torch.where(torch.isfinite(self.score), torch.inf, -torch.inf), logp / length], 1)
            pick = rank.topk(k, dim=1).indices
            best = scores.gather(1, pick)
        else:
            best, pick = scores.topk(k, dim=1)
        old = pick < k
        keep = pick.clamp(max=k - 1)
        fresh = (pick - k).clamp(min=0)
        return _Finished(best, torch.where(old, self.logp.gather(1, keep), logp.gather(1, fresh)),
                         torch.where(old, self.name.gather(1, keep), names.gather(1, fresh)),
                         torch.where(old, self.tokens.gather(1, keep), length))

    def take(self, index: torch.Tensor) -> "_Finished":
        return _Finished(self.score[index], self.logp[index], self.name[index], self.tokens[index])

    def put(self, index: torch.Tensor, other: "_Finished") -> None:
        self.score[index], self.logp[index], self.name[index], self.tokens[index] = \
            other.score, other.logp, other.name, other.tokens


class BeamSearch:
    def __init__(self, model, trie: Trie, beams: int = 10, batch_size: int = 32, stop: Stop = "exact",
                 temperature: float = 1.0):
        if beams < 1:
            raise ValueError("beams must be >= 1")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if stop not in STOPS:
            raise ValueError(f"stop must be one of {STOPS}, got {stop!r}")
        if model.training:
            raise ValueError("beam search needs the model in eval mode (dropout off): call model.eval()")
        self.model, self.trie, self.beams, self.batch_size = model, trie, beams, batch_size
        self.family = family_of(model)
        self.device = next(model.parameters()).device
        if trie.device != self.device:
            trie.to(self.device)
        # "exact": a beam may still grow to its longest completion; "heuristic" (what HF generate
        # does by default): judge each beam as if it ended now; "fairseq" needs no bound.
        self.stop, self.temperature = stop, temperature
        self.heights = trie.heights() if stop == "exact" else None
        # Padded source positions are masked: any id serves where a model names no pad (Llama's).
        self.pad = model.config.pad_token_id if model.config.pad_token_id is not None else trie.eos

    @torch.inference_mode()
    def search(self, sources: list[np.ndarray], prefixes: list[np.ndarray],
               stats: SearchStats | None = None) -> list[list[Hypothesis]]:
        """The top `beams` names of each example, best first (fewer if the trie has fewer)."""
        results: list[list[Hypothesis]] = [[] for _ in sources]
        for batch in batches(sources, prefixes, self.batch_size):
            found = self._search_batch([sources[i] for i in batch], [prefixes[i] for i in batch], stats)
            for i, hyps in zip(batch, found):
                results[i] = hyps
        return results

    def _search_batch(self, sources, prefixes, stats: SearchStats | None) -> list[list[Hypothesis]]:
        K, trie, dev = self.beams, self.trie, self.device
        B = len(sources)
        steps = self.family.steps(self.model)
        logits = steps.first(*batch_inputs(sources, prefixes, self.pad, dev))
        rows_per_step = [B]

        active = torch.arange(B, device=dev)  # example of each active slot
        states = trie.start(B)  # one beam per example until the first step fans out
        logp = torch.zeros(B, device=dev)
        width = 1  # beams per active example in the current rows
        length = 0  # name tokens so far (the same for every beam)
        # The K best finished names of each active slot, best first; then of each example.
        fin = _Finished.empty(B, K, dev)
        result = _Finished.empty(B, K, dev)

        while True:
            A = len(active)
            tokens, children, valid = trie.children(states)  # [rows, D]: D edges per beam at most
            D = tokens.shape[1]
            if self.temperature != 1.0:  # in place, as log_normalizer_ works: no second [rows, V] table
                logits = logits.float().div_(self.temperature)
            picked = logits.gather(1, tokens).float()
            cand = torch.where(valid, logp[:, None] + picked - log_normalizer_(logits)[:, None], -torch.inf)
            ends = children >= trie.n_internal
            length += 1
            if self.stop == "fairseq":
                # Only the eos candidates among the example's K best candidates finish.
                ranked, at = cand.view(A, width * D).topk(min(K, width * D), dim=1)
                end = ends.view(A, -1).gather(1, at) & torch.isfinite(ranked)
                if bool(end.any()):
                    names = children.view(A, -1).gather(1, at) - trie.n_internal
                    fin = fin.merge(torch.where(end, ranked, -torch.inf), names, length, keep_old=True)
            elif bool(ends.any()):
                # A beam has at most one eos edge: its best end candidate is that edge.
                end_logp, end_pos = torch.where(ends, cand, -torch.inf).max(1)
                names = children.gather(1, end_pos[:, None]).squeeze(1) - trie.n_internal
                fin = fin.merge(end_logp.view(A, width), names.view(A, width), length)

            # Running beams: the K best continuing candidates of each example, over all its beams.
            go = torch.where(ends, -torch.inf, cand).view(A, width * D)
            if go.shape[1] < K:
                go = torch.nn.functional.pad(go, (0, K - go.shape[1]), value=-torch.inf)
            top, pos = go.topk(K, dim=1)
            alive = torch.isfinite(top)
            # Rows hold as many beams per example as the example with the most live ones: deep
            # in a constrained search most examples have few, and dead rows would still cost a
            # model step each.
            beams = max(int(alive.sum(1).max()), 1)
            if beams < K:
                top, pos, alive = top[:, :beams], pos[:, :beams], alive[:, :beams]
            pos = pos.clamp(max=width * D - 1)
            base = (torch.arange(A, device=dev) * width)[:, None]
            parent = torch.where(alive, base + pos // D, base)
            new_states = torch.where(alive, children.view(A, -1).gather(1, pos), -1)
            new_tokens = torch.where(alive, tokens.view(A, -1).gather(1, pos), self.pad)

            # Done: K names finished and (but for fairseq's rule) no beam can reach the worst of
            # them, or no beam left.
            full = torch.isfinite(fin.score[:, -1])
            keep = None
            if bool(full.any()) or not bool(alive[:, 0].all()):
                if self.stop == "fairseq":
                    done = ~alive[:, 0] | full
                else:
                    room = self.heights[new_states.clamp(min=0)] if self.heights is not None else 0
                    bound = torch.where(alive, top / (length + room), -torch.inf).max(1).values
                    done = ~alive[:, 0] | (full & (bound <= fin.score[:, -1]))
                if bool(done.any()):
                    result.put(active[done], fin.take(done))
                    if bool(done.all()):
                        break
                    keep = (~done).nonzero(as_tuple=True)[0]
                    fin, active = fin.take(keep), active[keep]
                    parent, new_states, new_tokens, top = parent[keep], new_states[keep], new_tokens[keep], top[keep]
            if beams != width or keep is not None:
                # The rows change shape (beams per example change, or finished examples leave):
                # every per-row state follows, each new row's input named by a row of it.
                slots = keep if keep is not None else torch.arange(A, device=dev)
                steps.select(parent.reshape(-1), (slots * width).repeat_interleave(beams))
            else:
                steps.select(parent.reshape(-1))
            states, logp = new_states.reshape(-1), top.reshape(-1)
            width = beams
            logits = steps.step(new_tokens.reshape(-1))
            rows_per_step.append(len(states))

        if stats is not None:
            stats.batches.append({"examples": B, "prefix_lens": sorted({len(p) for p in prefixes}), "rows": rows_per_step})
        # Best first (fairseq's rule keeps names in the order they finished).
        result = result.take((torch.arange(B, device=dev)[:, None],
                              result.score.argsort(dim=1, descending=True, stable=True)))
        columns = zip(*(x.tolist() for x in (result.name, result.score, result.logp, result.tokens)))
        return [[Hypothesis(n, sc, lp, t) for n, sc, lp, t in zip(*example) if n >= 0] for example in columns]
