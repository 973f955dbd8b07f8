"""Data-parallel gradient averaging and clipping for ZeRO stage 0 in fp32, in a fixed number of
operations whatever the number of parameter tensors.

DeepSpeed's stage-0 path works parameter by parameter: its reduction flattens the gradients
into a new buffer, all-reduces and scales it, then copies every slice back (three passes over
all gradients besides the all-reduce, even on a lone rank), and its clipping takes one norm and
one multiply per parameter (for bart-large shapes, 511 tensors: ~2,000 operations a step, each a
kernel launch on a GPU). Here a multi-tensor (`_foreach`) copy moves every gradient into its
slice of one buffer that stays bound as `.grad`, the all-reduce sums the buffer in place, and one
norm and one multiply of the buffer average and clip it. A lone rank has nothing to average: its
gradients are clipped where they are, by multi-tensor norms and one multi-tensor multiply.
Summing before scaling by 1 / world size gives the values of the mean of the ranks' gradients
exactly when the world size is a power of two and within rounding otherwise. Pure torch: the
all-reduce (an in-place sum over the ranks) is given by the caller, torch.distributed's by default.
"""

from __future__ import annotations

from typing import Callable

import torch


def clip_scale(total_norm: torch.Tensor, clip: float) -> torch.Tensor:
    """What gradients of `total_norm` are multiplied by so theirs is at most `clip` (DeepSpeed's and
    torch's rule: clip / (norm + 1e-6), at most 1); a tensor, so the host never waits for the norm."""
    return (clip / (total_norm + 1e-6)).clamp_(max=1.0)


def clip_gradients(params: list[torch.nn.Parameter], clip: float) -> None:
    """Scale the gradients of `params` so their total 2-norm is at most `clip` (0: leave them).
    Not torch.nn.utils.clip_grad_norm_: its foreach path still moves each tensor's norm to one
    device with an operation of its own (one per parameter)."""
    grads = [p.grad for p in params if p.grad is not None]
    if clip <= 0 or not grads:
        return
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, clip_scale(total, clip))


class FlatGradients:
    def __init__(self, params: list[torch.nn.Parameter], world: int,
                 all_reduce: Callable[[torch.Tensor], object] | None = None):
        if not params:
            raise ValueError("no parameters to hold gradients for")
        if all_reduce is None:
            import torch.distributed as dist

            all_reduce = dist.all_reduce
        self.world, self.all_reduce = world, all_reduce
        self.buffer = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        self.params, self.views, offset = params, [], 0
        for p in params:
            self.views.append(self.buffer[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    def all_reduce_mean(self, clip: float = 0.0) -> None:
        """Average the gradients over the ranks and, with `clip` > 0, scale them to a total 2-norm
        of at most `clip`; afterwards every `.grad` is a view of the buffer.

        Gradients come out of backward as tensors of their own and are copied in here: binding
        the views as `.grad` before backward instead would make autograd add into them, one
        addition per parameter and a zeroing of the buffer. A parameter without a gradient on
        this rank counts as zeros, as in any data-parallel mean."""
        fresh, into, absent = [], [], []
        for p, view in zip(self.params, self.views):
            if p.grad is None:
                absent.append(view)
            elif p.grad is not view:  # else the optimizer zeroed it in place and backward added into it
                fresh.append(p.grad)
                into.append(view)
            p.grad = view
        if fresh:
            torch._foreach_copy_(into, fresh)
        if absent:
            torch._foreach_zero_(absent)
        self.all_reduce(self.buffer)
        scale = 1.0 / self.world
        if clip > 0:
            # The mean's norm is the sum's over world size; one multiply then both averages and clips.
            scale = clip_scale(torch.linalg.vector_norm(self.buffer) * scale, clip) * scale
        self.buffer.mul_(scale)
