"""How many aten operations a piece of training code dispatches (torch.profiler), the measure of
host work that grows with the number of parameter tensors: it does not depend on the machine, so
a CPU run shows what a GPU step pays in launches and Python (bench/train.py, the tests)."""

from __future__ import annotations

from typing import Callable


def count_aten_ops(fn: Callable[[], object]) -> dict[str, int]:
    """Run `fn` under the profiler: `dispatched` counts the aten operations called from outside
    any other (what Python and DeepSpeed dispatch; a multi-tensor `_foreach` operation is one),
    `all` every aten operation, also those an operation calls itself (a composite's parts, and
    on CPU the per-tensor loop of a multi-tensor operation, which has no fused CPU kernel)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts = {"dispatched": 0, "all": 0}
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        counts["all"] += 1
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        counts["dispatched"] += parent is None
    return counts


def step_op_counts(model, batch: dict, config: dict, own_gradients: bool = True) -> dict:
    """The aten operations one optimizer step of a DeepSpeedStrategy over `model` dispatches on
    `batch` (NLL; `config` a ds_config of one micro-batch a step; torch.distributed initialized),
    split into the model's forward and backward and the rest (optimizer, gradient hooks,
    reductions, checks, clipping). The split is by difference: forward and backward are counted on
    the bare model first (a plain `loss.backward()`, before the engine hooks into it), then the
    whole step through the strategy; the engine's own work is the rest."""
    from angel_dist.train.config import TrainConfig
    from angel_dist.train.loop import nll_step
    from angel_dist.train.strategy import DeepSpeedStrategy

    if config["gradient_accumulation_steps"] != 1:
        raise ValueError("counted per optimizer step of one micro-batch: gradient_accumulation_steps must be 1")
    cfg = TrainConfig(data=["-"])

    def forward_backward():
        nll_step(model, batch, cfg)[0].backward()

    forward_backward()  # warm-up: first calls take paths of their own
    model.zero_grad(set_to_none=True)
    inside = count_aten_ops(forward_backward)
    model.zero_grad(set_to_none=True)
    strategy = DeepSpeedStrategy(model, config, own_gradients)

    def step():
        strategy.backward(nll_step(strategy.model, batch, cfg)[0])
        strategy.step(config["optimizer"]["params"]["lr"])

    step(), step()
    whole = count_aten_ops(step)
    rest = {k: whole[k] - inside[k] for k in whole}
    return {"parameter_tensors": len(strategy.params), "forward_backward": inside, "rest": rest,
            "rest_over_forward_backward": rest["dispatched"] / inside["dispatched"]}
