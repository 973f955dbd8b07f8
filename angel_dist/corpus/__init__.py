"""Corpora: KB-guided pretraining examples and benchmark mention examples."""
