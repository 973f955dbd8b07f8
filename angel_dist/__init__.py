"""angel-dist: ANGEL-style generative biomedical entity linking at scale."""

__version__ = "0.1.0"
