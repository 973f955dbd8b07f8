"""Training objectives on top of the log-prob function: pure torch, no DeepSpeed or Ray."""

from angel_dist.objectives.dpo import DPO_LOSSES, dpo_loss
from angel_dist.objectives.nll import label_smoothed_nll

__all__ = ["DPO_LOSSES", "dpo_loss", "label_smoothed_nll"]
