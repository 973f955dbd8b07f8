"""`angel corpus pretrain` and `angel corpus mentions`: examples -> token ids -> shard sets on Ray.

Examples go to shard `stable_hash(group) % n_shards`, where the group is the concept (all
examples of a concept share a shard) or the mention (its SYN-k rows share a shard).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from angel_dist.corpus.encode import MAX_SOURCE_TOKENS, encode_examples
from angel_dist.corpus.example import Example
from angel_dist.corpus.kb_examples import KbExampleConfig, MentionScheme, kb_examples
from angel_dist.corpus.mention_examples import KbIndex, MentionExampleConfig, mention_examples
from angel_dist.corpus.pubtator import read_pubtator
from angel_dist.corpus.similarity import CharTfidf
from angel_dist.digest import file_sha256
from angel_dist.errors import BadInputError, BadInputPolicy
from angel_dist.kb.table import read_kb, read_kb_meta
from angel_dist.keys import shard_of
from angel_dist.shards.distributed import run_shard_tasks
from angel_dist.shards.format import sample_members
from angel_dist.shards.writer import ShardSetPlan, finish, prepare, write_shard
from angel_dist.tokenizer import load_tokenizer, tokenizer_fingerprint

ENCODE_CHUNK = 2048
CONCEPT_CHUNK = 4096
NAMES_PER_SHARD = 100_000


def _write_examples(out: str, index: int, config_hash: str, examples: Iterable[Example], tokenizer,
                    max_source_tokens: int) -> dict:
    """Tokenize examples in chunks and stream them into shard `index`."""
    stats: Counter = Counter()

    def samples() -> Iterator[list[tuple[str, bytes]]]:
        chunk: list[Example] = []
        for example in examples:
            chunk.append(example)
            if len(chunk) == ENCODE_CHUNK:
                yield from _encode(chunk)
                chunk = []
        yield from _encode(chunk)

    def _encode(chunk):
        for encoded in encode_examples(chunk, tokenizer, max_source_tokens):
            meta = encoded.example.meta
            if "template" in meta:
                stats[f"template:{meta['form']}:{meta['template']}"] += 1
            if len(encoded.source_ids) >= max_source_tokens:
                stats["truncated_sources"] += 1
            yield sample_members(encoded), len(encoded.source_ids)

    return write_shard(out, index, config_hash, samples(), stats)


def _partition(groups: list[str], n_shards: int) -> dict[int, np.ndarray]:
    shard = np.fromiter((shard_of(g, n_shards) for g in groups), dtype=np.int64, count=len(groups))
    order = np.argsort(shard, kind="stable")
    bounds = np.searchsorted(shard[order], np.arange(n_shards + 1))
    return {i: order[bounds[i]:bounds[i + 1]] for i in range(n_shards)}


@dataclass(frozen=True)
class PretrainCorpusConfig:
    mention_scheme: MentionScheme = "random"  # GenBioEL's; ANGEL's release uses most_sim
    seed: int = 0
    max_source_tokens: int = MAX_SOURCE_TOKENS
    shards: int | None = None  # default: one per NAMES_PER_SHARD names, at least 8


def _kb_shard_task(index: int, table: pa.Table, out: str, config_hash: str, tokenizer_dir: str, config: dict,
                   idf: np.ndarray | None, rows: np.ndarray) -> dict:
    tokenizer = load_tokenizer(tokenizer_dir)
    example_config = KbExampleConfig(mention_scheme=config["mention_scheme"], seed=config["seed"])
    tfidf = CharTfidf(idf) if idf is not None else None
    part = table.take(pa.array(rows))

    def examples():
        for start in range(0, part.num_rows, CONCEPT_CHUNK):
            yield from kb_examples(part.slice(start, CONCEPT_CHUNK), example_config, tfidf)

    return _write_examples(out, index, config_hash, examples(), tokenizer, config["max_source_tokens"])


def build_pretrain_corpus(kb_path: str | Path, tokenizer_dir: str, out: str | Path,
                          config: PretrainCorpusConfig = PretrainCorpusConfig(), workers: int | None = None,
                          overwrite: bool = False, progress: bool = True) -> dict:
    """Write the KB-guided pretraining corpus of a KB table as a shard set; returns the manifest."""
    kb_meta = read_kb_meta(kb_path)
    table = read_kb(kb_path, ["cui", "names", "definitions"])
    tokenizer = load_tokenizer(tokenizer_dir)
    n_names = int(pa.compute.sum(pa.compute.list_value_length(table["names"])).as_py() or 0)
    n_shards = config.shards or max(8, -(-n_names // NAMES_PER_SHARD))
    settings = {**asdict(config), "shards": n_shards, "kind": "kb"}
    plan = ShardSetPlan(Path(out), "examples", n_shards, settings,
                        {"tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
                         "kb_fingerprint": kb_meta["fingerprint"]})
    pending = prepare(plan, overwrite)
    idf = None
    if pending and config.mention_scheme == "most_sim":
        idf = CharTfidf.fit(pa.compute.list_flatten(table["names"])).idf
    parts = _partition(table["cui"].to_pylist(), n_shards) if pending else {}
    result = run_shard_tasks(_kb_shard_task, pending,
                             common=(table, str(plan.out), plan.config_hash, str(tokenizer_dir), settings, idf),
                             own={i: (parts[i],) for i in pending}, workers=workers, progress=progress,
                             desc="kb examples")
    manifest = finish(plan, {"concepts": table.num_rows, "names": n_names})
    manifest["run"] = {"shards_written": len(pending), "workers": result["workers"]}
    return manifest


def _sources(paths: list) -> dict:
    """The PubTator files in a shard set's config (one file as before several could be given)."""
    names, digests = [Path(p).name for p in paths], [file_sha256(p) for p in paths]
    if len(paths) == 1:
        return {"pubtator": names[0], "pubtator_sha256": digests[0]}
    return {"pubtator": names, "pubtator_sha256": digests}


def _mention_shard_task(index: int, out: str, config_hash: str, tokenizer_dir: str, max_source_tokens: int,
                        examples: list[Example]) -> dict:
    return _write_examples(out, index, config_hash, examples, load_tokenizer(tokenizer_dir), max_source_tokens)


def build_mention_corpus(pubtator: str | Path | list[str | Path], kb_path: str | Path, tokenizer_dir: str, out: str | Path,
                         config: MentionExampleConfig = MentionExampleConfig(), shards: int = 4,
                         max_source_tokens: int = MAX_SOURCE_TOKENS, on_bad_input: str = "error",
                         workers: int | None = None, overwrite: bool = False, progress: bool = True,
                         allow_empty: bool = False) -> dict:
    """Write the examples of a benchmark split (one PubTator file, or several read one after the
    other: train and dev trained on together) as a shard set; returns the manifest. A split that
    yields no example is bad input unless `allow_empty`."""
    paths = [pubtator] if isinstance(pubtator, (str, Path)) else list(pubtator)
    kb_meta = read_kb_meta(kb_path)
    table = read_kb(kb_path, ["cui", "names", "alt_ids"])
    tokenizer = load_tokenizer(tokenizer_dir)
    policy = BadInputPolicy(on_bad_input)
    tfidf = CharTfidf.fit(pa.compute.list_flatten(table["names"]))
    read_counts = Counter()
    documents = (doc for path in paths for doc in read_pubtator(path, policy, read_counts))
    examples, counts = mention_examples(documents, KbIndex(table), tfidf, config)
    counts.update(read_counts)
    counts["bad_input_skipped"] = policy.total_skipped
    policy.report()
    if not examples and not allow_empty:
        read = ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "no documents"
        raise BadInputError(", ".join(map(str, paths)), None, f"no examples ({read}); expected at least one "
                                                 f"(--allow-empty writes an empty shard set)")
    settings = {**asdict(config), "shards": shards, "max_source_tokens": max_source_tokens, "kind": "mention",
                **_sources(paths)}
    plan = ShardSetPlan(Path(out), "examples", shards, settings,
                        {"tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
                         "kb_fingerprint": kb_meta["fingerprint"]})
    pending = prepare(plan, overwrite)
    parts = _partition([e.group for e in examples], shards)
    result = run_shard_tasks(_mention_shard_task, pending,
                             common=(str(plan.out), plan.config_hash, str(tokenizer_dir), max_source_tokens),
                             own={i: ([examples[j] for j in parts[i]],) for i in pending}, workers=workers,
                             progress=progress, desc="mention examples")
    manifest = finish(plan, counts)
    manifest["run"] = {"shards_written": len(pending), "workers": result["workers"]}
    return manifest
