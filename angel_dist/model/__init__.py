"""The generative linker's models: two backbone families (seq2seq BART, causal decoder-only),
presets or pretrained, and the one log-prob function."""

from angel_dist.model.family import Family, family_of, padding_id
from angel_dist.model.logprob import Scores, encode, score, score_pairs
from angel_dist.model.presets import PRESETS, load_model, model_family, save_model

__all__ = ["PRESETS", "Family", "Scores", "encode", "family_of", "load_model", "model_family", "padding_id",
           "save_model", "score", "score_pairs"]
