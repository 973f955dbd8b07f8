"""Distributed training: Ray Train hosts the ranks, DeepSpeed ZeRO runs them, checkpoints resume them."""

from angel_dist.train.config import TrainConfig

__all__ = ["TrainConfig"]
