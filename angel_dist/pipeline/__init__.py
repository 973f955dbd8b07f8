"""The pipeline: one recipe drives every stage (kb, tokenizer, trie, corpora, training, mining
rounds, evaluation, export, report), recorded in run.json and resumable."""

from angel_dist.pipeline.recipe import Recipe, load_recipe
from angel_dist.pipeline.run import Pipeline, run_pipeline

__all__ = ["Pipeline", "Recipe", "load_recipe", "run_pipeline"]
