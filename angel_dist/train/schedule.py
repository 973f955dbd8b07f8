"""Learning-rate schedules as a pure function of the optimizer step (nothing to checkpoint)."""

from __future__ import annotations


def lr_at(step: int, base_lr: float, schedule: str, warmup: int, total: int, power: float = 1.0) -> float:
    """`linear`: warmup then linear decay to 0 (GenBioEL's "LL"); `polynomial`: warmup then
    (1 - progress) ** power; `constant`: warmup then flat."""
    if warmup and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return base_lr * (1.0 - progress) ** (1.0 if schedule == "linear" else power)
