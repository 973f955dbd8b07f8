"""The generative linker: BART models (presets or pretrained) and the one log-prob function."""

from angel_dist.model.logprob import Scores, encode, score, score_pairs
from angel_dist.model.presets import PRESETS, load_model

__all__ = ["PRESETS", "Scores", "encode", "load_model", "score", "score_pairs"]
