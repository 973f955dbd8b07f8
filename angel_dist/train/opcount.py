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
