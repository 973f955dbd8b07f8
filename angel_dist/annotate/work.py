"""One shard of `angel annotate` on a loaded linker, with no Ray in sight (the pool calls it):
its documents' mentions -> model inputs -> the search -> one JSON line per mention, written as
one part."""

from __future__ import annotations

import json
from pathlib import Path

from angel_dist.annotate.parts import write_part
from angel_dist.corpus.pubtator import Document
from angel_dist.decode.linker import Linker, as_json
from angel_dist.gold import gold_concepts
from angel_dist.mine.work import search_inputs


def linked_lines(documents: list[Document], predictions: list, k: int) -> list[str]:
    """One JSON line per mention, in document order: document, index, type, the linked mention
    (top-k names, ids, scores) and its gold ids when it has some."""
    lines, i = [], 0
    for doc in documents:
        text = doc.text
        for j, m in enumerate(doc.mentions):
            record = {"document": doc.pmid, "index": j, "type": m.type,
                      **as_json(text, m.start, m.end, predictions[i][:k])}
            gold = gold_concepts(m.ids)
            if gold:
                record["gold"] = gold
            lines.append(json.dumps(record, ensure_ascii=False))
            i += 1
    return lines


def annotate_shard(linker: Linker, documents: list[Document], index: int, parts: str | Path, config_hash: str, k: int,
                   chunk: int, fault: tuple[int, int, Path] | None = None) -> dict:
    encoded = linker.encode(documents)
    samples = [{"source_ids": e.source_ids, "prefix_ids": e.prefix_ids} for e in encoded]
    predictions = search_inputs(linker, samples, chunk, index, fault)
    record = write_part(Path(parts), index, config_hash, linked_lines(documents, predictions, k))
    return {"index": index, "inputs": len(samples), "sha256": record["sha256"]}
