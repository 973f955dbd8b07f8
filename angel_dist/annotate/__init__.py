"""`angel annotate`: link every given mention span of a PubTator or JSONL file on the mining
actor pool, in shards written atomically (a rerun skips finished ones; a killed actor's shard is
redone), then gather them:

  OUT/annotations.jsonl      one line per mention: document, index, type, mention, start, end,
                             names, ids, scores (top-k), gold (when the input has gold ids)
  OUT/annotations.pubtator   PubTator input only: the input with the top name's ids in the id column
  OUT/summary.json           counts, and acc@1..k over the mentions with gold ids
  OUT/parts/                 the shards (parts.py)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.compute as pc

from angel_dist.annotate.documents import InputFormat, read_documents
from angel_dist.annotate.parts import config_hash, part_path, prepare_parts
from angel_dist.atomic import atomic_path, write_json
from angel_dist.corpus.pubtator import Document, Mention, format_pubtator
from angel_dist.errors import BadInputPolicy
from angel_dist.evaluate.metrics import accuracy
from angel_dist.digest import file_sha256

MENTIONS_PER_SHARD = 512


@dataclass
class AnnotateConfig:
    model: str  # a bundle, or a model or training run directory with `trie`
    input: str
    out: str
    format: InputFormat = "pubtator"
    trie: str | None = None
    k: int = 5  # names written per mention; acc@1..k
    beams: int = 10
    shards: int | None = None  # default: one per MENTIONS_PER_SHARD mentions
    actors: int = 1
    batch_size: int = 32
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    on_bad_input: str = "error"
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if not 1 <= self.k <= self.beams:
            raise ValueError(f"need 1 <= k <= beams, got k={self.k}, beams={self.beams}")
        if self.actors < 1 or (self.shards is not None and self.shards < 1):
            raise ValueError("actors and shards must be >= 1")


def _split(documents: list[Document], n: int) -> list[list[Document]]:
    """`n` runs of consecutive documents holding about as many mentions each (input order kept)."""
    total = sum(len(d.mentions) for d in documents)
    out, current, seen = [], [], 0
    for doc in documents:
        current.append(doc)
        seen += len(doc.mentions)
        if len(out) < n - 1 and seen >= total * (len(out) + 1) / n:
            out.append(current)
            current = []
    return out + [current] + [[] for _ in range(n - len(out) - 1)]


def annotate(cfg: AnnotateConfig) -> dict:
    """Annotate `cfg.input` into `cfg.out`; returns the summary (also in OUT/summary.json)."""
    from angel_dist.decode.linker import linker_files
    from angel_dist.mine import linker_spec
    from angel_dist.mine.pool import run_pool
    from angel_dist.mine.work import FAULT_ENV, MineSettings
    from angel_dist.train.export import model_fingerprint
    from angel_dist.trie import Trie

    files = linker_files(cfg.model, cfg.trie)
    trie = Trie.load(files["trie_dir"])
    policy = BadInputPolicy(cfg.on_bad_input)
    documents = read_documents(cfg.input, cfg.format, policy)
    policy.report()
    mentions = sum(len(d.mentions) for d in documents)
    n_shards = cfg.shards or max(1, math.ceil(mentions / MENTIONS_PER_SHARD))
    inputs = {key: files[key] for key in ("inputs", "max_source_tokens") if key in files}  # a bundle's
    settings = {"input_sha256": file_sha256(cfg.input), "format": cfg.format, "shards": n_shards, "k": cfg.k,
                "beams": cfg.beams, "model_fingerprint": model_fingerprint(files["model_dir"]),
                "trie_kb": trie.meta.get("kb_fingerprint"), "on_bad_input": cfg.on_bad_input, **inputs}
    out, parts = Path(cfg.out), Path(cfg.out) / "parts"
    pending = prepare_parts(parts, settings, n_shards, cfg.overwrite)
    shards = _split(documents, n_shards)
    spec = {**linker_spec(Path(files["model_dir"]), files["trie_dir"], cfg.beams, cfg.batch_size, cfg.gpus_per_actor),
            **inputs}
    jobs = [(i, shards[i], str(parts), config_hash(settings), cfg.k) for i in pending]
    run_pool("annotate", jobs, spec, MineSettings(), cfg.actors, cfg.cpus_per_actor, cfg.gpus_per_actor,
             fault=os.environ.get(FAULT_ENV) or None, fault_dir=str(parts),
             total_inputs=sum(len(d.mentions) for i in pending for d in shards[i]), progress=cfg.progress,
             desc="annotate")
    records = _gather(parts, n_shards, out / "annotations.jsonl")
    if cfg.format == "pubtator":
        _write_pubtator(documents, records, out / "annotations.pubtator")
    gold = [{"cui_label": r["gold"], "cui_result": r["ids"]} for r in records if "gold" in r]
    kb_cuis = set(pc.unique(pc.list_flatten(trie.names()["cuis"])).to_pylist())
    summary = {"documents": len(documents), "mentions": len(records), "bad_input_skipped": policy.total_skipped,
               "shards_written": len(pending), "config": asdict(cfg),
               **({"gold": accuracy(gold, cfg.k, kb_cuis)} if gold else {})}
    write_json(out / "summary.json", summary)
    return summary


def _gather(parts: Path, n_shards: int, target: Path) -> list[dict]:
    """Concatenate the parts, in order, into `target`; returns their records."""
    records = []
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for i in range(n_shards):
                text = part_path(parts, i).read_text(encoding="utf-8")
                f.write(text)
                records += [json.loads(line) for line in text.splitlines()]
    return records


def _top_ids(record: dict) -> str:
    return "|".join(record["ids"][0]) if record["ids"] and record["ids"][0] else "-1"


def _write_pubtator(documents: list[Document], records: list[dict], target: Path) -> None:
    """The input documents with each mention's id column holding its top name's ids (`|`-joined)."""
    top = iter(records)
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for doc in documents:
                mentions = [Mention(m.start, m.end, m.text, m.type, _top_ids(next(top)), m.line) for m in doc.mentions]
                f.write(format_pubtator(Document(doc.pmid, doc.title, doc.abstract, mentions)))
