"""ZeRO stage 1, owned by the strategy: AdamW's moments partitioned over the ranks, and an
optimizer step whose operations do not grow with the number of parameter tensors.

DeepSpeed's ZeRO-1/2 optimizer (0.19.8) reduces gradients through per-parameter hooks (a copy into
a bucket, another into the partition, a norm per parameter): for bart-large's 511 tensors ~10,000
aten operations a step outside forward and backward, 2.6 times those inside them, and none of its
options removes them. Here the parameters are views of one flat buffer, padded to a multiple of the
world size, and rank r owns its r-th equal slice: the AdamW moments of those values and their
update. Each micro-batch's gradients are added into one fp32 flat buffer (one multi-tensor add;
autograd's tensors are then dropped), and a step is a fixed handful of operations: one
reduce-scatter (each rank receives the sum of its slice), one norm and one all-reduce of a scalar
for the global norm, one multiply that averages and clips, one fused AdamW update of the slice,
one all-gather of the slices into the parameters.

Parameters in bf16 are stepped through an fp32 master copy of the rank's slice, and gradients are
accumulated and reduced in fp32, as DeepSpeed's bf16 optimizer does (fp16 would need loss
scaling, which this does not do).

Memory is ZeRO-1's: every rank holds the whole fp32 gradient (with autograd's gradient of the
micro-batch beside it while it is added) and 1 / world of the moments (and of the bf16 master).

A checkpoint holds each rank's slice of the moments (and of the master) with its bounds
(`partition_state`); a run on another world size takes the values of its slice from whichever
saved slices hold them (`load_partitions`), so a world-size change needs no conversion;
`whole_master` puts a bf16 run's fp32 values back together for export. Pure torch: the
collectives are given by the caller, torch.distributed's by default.
"""

from __future__ import annotations

import hashlib
from typing import Callable, NamedTuple

import torch

from angel_dist.train.grad_reduce import clip_scale


class Collectives(NamedTuple):
    reduce_scatter: Callable[[torch.Tensor, torch.Tensor], object]  # (out, flat): out = Σ ranks' flat[rank's slice]
    all_gather: Callable[[torch.Tensor, torch.Tensor], object]  # (flat, slice): every rank's slice into flat
    all_reduce: Callable[[torch.Tensor], object]  # in-place sum


def torch_collectives() -> Collectives:
    import torch.distributed as dist

    return Collectives(dist.reduce_scatter_tensor, dist.all_gather_into_tensor, dist.all_reduce)


def collectives_from_all_reduce(all_reduce: Callable[[torch.Tensor], object], rank: int) -> Collectives:
    """ZeRO-1's collectives through an in-place sum alone, for DeepSpeed's shared-memory all-reduce
    on one node's CPUs (about twice as fast as gloo over TCP loopback, angel_dist/train/strategy.py):
    a reduce-scatter is the sum's slice; an all-gather the sum of every rank's slice among zeros,
    exact in any float type (x + 0 = x). It sums the whole buffer where the true collectives move
    1 / world of it."""
    def reduce_scatter(out: torch.Tensor, flat: torch.Tensor) -> None:
        all_reduce(flat)
        out.copy_(flat[rank * out.numel():(rank + 1) * out.numel()])

    def all_gather(flat: torch.Tensor, own: torch.Tensor) -> None:
        flat[:rank * own.numel()].zero_()
        flat[(rank + 1) * own.numel():].zero_()
        all_reduce(flat)

    return Collectives(reduce_scatter, all_gather, all_reduce)


def layout_of(named_params: list[tuple[str, torch.nn.Parameter]]) -> str:
    """Which flat layout a set of moments belongs to: a digest of the parameters' names and shapes, in order."""
    text = "\n".join(f"{name}:{tuple(p.shape)}" for name, p in named_params)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PartitionedAdamW(torch.optim.AdamW):
    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], rank: int, world: int, *, lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 clip: float = 0.0, collectives: Collectives | None = None):
        """Rebinds every parameter's `.data` to a view of one flat buffer (their values kept), as
        DeepSpeed's ZeRO does, so the all-gather writes the parameters themselves; the model must
        be on its device, and its parameters in sync across the ranks, before."""
        params = [p for _, p in named_params]
        if not params:
            raise ValueError("no parameters to optimize")
        self.dtype = params[0].dtype
        if self.dtype not in (torch.float32, torch.bfloat16) or any(p.dtype != self.dtype for p in params):
            raise ValueError(f"the strategy's ZeRO-1 steps parameters all in fp32 or all in bf16, not "
                             f"{sorted({str(p.dtype) for p in params})}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        self.rank, self.world, self.clip = rank, world, clip
        self.collectives = collectives or torch_collectives()
        self.layout, self.numel = layout_of(named_params), sum(p.numel() for p in params)
        self.size = -(-self.numel // world)  # every rank's slice, the last one padded
        device = params[0].device
        self.flat = torch.zeros(self.size * world, dtype=self.dtype, device=device)
        self.grads = torch.zeros(self.size * world, device=device)
        self.model_params, self.grad_views, offset = params, [], 0
        with torch.no_grad():
            for p in params:  # once, at set-up
                view = self.flat[offset:offset + p.numel()].view_as(p)
                view.copy_(p)
                p.data = view
                self.grad_views.append(self.grads[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
        self.own = self.flat[self.rank * self.size:(self.rank + 1) * self.size]
        self.master = self.own if self.dtype == torch.float32 else self.own.float()
        # A lone rank's slice is the whole buffer; others receive their reduced slice apart (a
        # reduce-scatter's output may not overlap its input on every backend).
        self.master.grad = self.grads[:self.size] if world == 1 else torch.zeros(self.size, device=device)
        super().__init__([self.master], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)

    @torch.no_grad()
    def accumulate(self) -> None:
        """Add the gradients autograd left in the parameters to the flat fp32 buffer and drop them
        (after each micro-batch's backward; a step does it too)."""
        fresh, into = [], []
        for p, view in zip(self.model_params, self.grad_views):
            if p.grad is not None:
                fresh.append(p.grad)
                into.append(view)
                p.grad = None
        if fresh:
            torch._foreach_add_(into, fresh)

    @torch.no_grad()
    def step(self, closure=None):
        """Average the ranks' accumulated gradients (a parameter without one counts as zeros),
        clip them to a total 2-norm of `clip` (0: not clipped), update this rank's slice, gather
        every slice, and start the next accumulation from zero."""
        if closure is not None:
            raise ValueError("PartitionedAdamW takes no closure")
        self.accumulate()
        part = self.master.grad
        if self.world > 1:
            self.collectives.reduce_scatter(part, self.grads)
        scale = 1.0 / self.world
        if self.clip > 0:
            squares = torch.linalg.vector_norm(part).square()
            if self.world > 1:
                self.collectives.all_reduce(squares)
            # The mean's norm is the sum's over world size; one multiply then both averages and clips.
            scale = clip_scale(squares.sqrt() * scale, self.clip) * scale
        part.mul_(scale)
        super().step()
        if self.master is not self.own:
            self.own.copy_(self.master)
        if self.world > 1:
            self.collectives.all_gather(self.flat, self.own)
        self.grads.zero_()

    def partition_state(self) -> dict:
        """This rank's slice of the moments, with what a run of any world size needs to place it."""
        state = self.state.get(self.master, {})
        zeros = torch.zeros(self.size, device=self.master.device)
        part = {"layout": self.layout, "numel": self.numel, "world": self.world, "rank": self.rank,
                "start": self.rank * self.size, "step": float(state["step"]) if state else 0.0,
                "exp_avg": state.get("exp_avg", zeros).detach().cpu(),
                "exp_avg_sq": state.get("exp_avg_sq", zeros).detach().cpu()}
        if self.master is not self.own:  # fp32 parameters are saved whole with the model already
            part["master"] = self.master.detach().cpu()
        return part

    def load_partitions(self, parts: list[dict]) -> None:
        """Take this rank's slice of the moments (and of the master, when saved: a bf16 run's) from
        the slices every rank of a saved run wrote (`partition_state`, any world size), after the
        model's parameters were loaded. ValueError when they do not make one whole state of this
        layout."""
        size = _check_parts(parts, self.layout, self.numel)
        lo, hi = self.rank * self.size, min((self.rank + 1) * self.size, self.numel)
        names = ("exp_avg", "exp_avg_sq", "master") if "master" in parts[0] else ("exp_avg", "exp_avg_sq")
        state = {k: torch.zeros(self.size, device=self.master.device) for k in names}
        for part in parts:
            start, stop = max(lo, part["start"]), min(hi, part["start"] + size)
            if start < stop:
                for k in state:
                    state[k][start - lo:stop - lo].copy_(part[k][start - part["start"]:stop - part["start"]])
        if "master" in state:
            # The saved fp32 values, not the model's rounded ones; every rank's parameters are then
            # set from them (bf16: rounded once, as every step rounds them).
            with torch.no_grad():
                self.master[:hi - lo].copy_(state.pop("master")[:hi - lo])
                if self.master is not self.own:
                    self.own.copy_(self.master)
                if self.world > 1:
                    self.collectives.all_gather(self.flat, self.own)
        state["step"] = torch.tensor(float(parts[0]["step"]), dtype=torch.float32, device=self.master.device)
        self.state[self.master] = state


def _check_parts(parts: list[dict], layout: str, numel: int) -> int:
    """The slice size of a saved world whose partitions `parts` are, once they are checked to be one
    whole state of this layout; ValueError otherwise."""
    keys = {"layout", "numel", "world", "rank", "start", "step", "exp_avg", "exp_avg_sq"}
    if not parts:
        raise ValueError("no optimizer partitions")
    for part in parts:
        if not isinstance(part, dict) or set(part) - {"master"} != keys or ("master" in part) != ("master" in parts[0]):
            raise ValueError(f"expected an optimizer partition with the keys {sorted(keys)} (and `master` in all or "
                             f"none)")
        if not all(type(part[k]) is int for k in ("numel", "world", "rank", "start")) \
                or not isinstance(part["step"], float):
            raise ValueError("expected integer bounds and a float step in every optimizer partition")
    saved = parts[0]["world"]
    if saved < 1 or sorted(p["rank"] for p in parts) != list(range(saved)):
        raise ValueError(f"expected one optimizer partition per rank of the saved world, found ranks "
                         f"{sorted(p['rank'] for p in parts)} of {saved}")
    size = -(-numel // saved)
    for part in parts:
        if part["layout"] != layout or part["numel"] != numel:
            raise ValueError(f"the optimizer partitions belong to other parameters (layout {part['layout']}, "
                             f"{part['numel']} values; this model: {layout}, {numel})")
        if part["world"] != saved or part["start"] != part["rank"] * size or part["step"] != parts[0]["step"]:
            raise ValueError("the optimizer partitions disagree on their world size, bounds or step")
        if any(not isinstance(part[k], torch.Tensor) or part[k].dtype != torch.float32 or part[k].shape != (size,)
               for k in ("exp_avg", "exp_avg_sq", "master") if k in part):
            raise ValueError(f"expected moments of {size} fp32 values in every optimizer partition")
    return size


def whole_master(parts: list[dict], named_params: list[tuple[str, torch.nn.Parameter]]) -> dict | None:
    """The fp32 values of every parameter, by name, from a bf16 run's saved slices of the master
    (None when they hold none: an fp32 run's model states are those values already)."""
    numel = sum(p.numel() for _, p in named_params)
    _check_parts(parts, layout_of(named_params), numel)
    if "master" not in parts[0]:
        return None
    flat = torch.cat([part["master"] for part in sorted(parts, key=lambda part: part["rank"])])[:numel]
    out, offset = {}, 0
    for name, p in named_params:
        out[name] = flat[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    return out
